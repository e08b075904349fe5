//! Counts a Wasm filter's calls out of the VM: rewrites a module so that every call to an imported
//! function (proxy-wasm's `proxy_*`, WASI's) first bumps an Envoy counter named after it
//! (`whisk_hostcall_<import>`, Envoy's stat `wasmcustom.whisk_hostcall_<import>`). The bench runs
//! the filter so rewritten with `--count-host-calls` and reports the calls per invoke.
//!
//! Each import gets a wrapper that the module's code calls instead. On its first call the wrapper
//! takes a fresh page of linear memory (`memory.grow`, which the module's allocator treats as
//! anyone else's: it grows past it), writes the counter's name there and defines the counter with
//! `proxy_define_metric`; every call then bumps it with `proxy_increment_metric`, both through the
//! original imports, so that the counting is not counted. A wrapper whose counter could not be
//! defined calls through uncounted. The bumps are calls out of the VM themselves: a counted build
//! says how many calls there are, not how long they take.

use walrus::ir::{BinaryOp, Instr, InstrLocId, LoadKind, MemArg, StoreKind, VisitorMut};
use walrus::{ConstExpr, FunctionBuilder, FunctionId, GlobalId, MemoryId, Module, ModuleConfig, ValType};

/// Prefix of the counters' names.
pub const COUNTER_PREFIX: &str = "whisk_hostcall_";

/// Where in its page a wrapper has `proxy_define_metric` write the counter's id (past any name).
const ID_OFFSET: u32 = 4096;

/// Counter ids before they are defined, and when they could not be.
const UNDEFINED: i32 = -1;
const UNAVAILABLE: i32 = -2;

/// `MetricType::Counter` in the proxy-wasm ABI.
const METRIC_COUNTER: i32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error("not a Wasm module walrus can read: {0}")]
    Parse(String),
    #[error("the module has no linear memory to write counter names in")]
    NoMemory,
}

/// The module `wasm` with every call to an imported function counted (see the module doc).
pub fn count_host_calls(wasm: &[u8]) -> Result<Vec<u8>, InstrumentError> {
    let mut config = ModuleConfig::new();
    config.generate_dwarf(false).generate_name_section(true);
    let mut module = config.parse(wasm).map_err(|error| InstrumentError::Parse(error.to_string()))?;
    let memory = module.memories.iter().next().map(|memory| memory.id()).ok_or(InstrumentError::NoMemory)?;
    let imported: Vec<(FunctionId, String)> = module
        .imports
        .iter()
        .filter_map(|import| match import.kind {
            walrus::ImportKind::Function(function) => Some((function, import.name.clone())),
            _ => None,
        })
        .collect();
    let define = import_function(&mut module, "proxy_define_metric", &[ValType::I32; 4], &[ValType::I32]);
    let increment = import_function(
        &mut module,
        "proxy_increment_metric",
        &[ValType::I32, ValType::I64],
        &[ValType::I32],
    );
    let metrics = Metrics { memory, define, increment };
    let wrappers: Vec<(FunctionId, FunctionId)> = imported
        .iter()
        .map(|(original, name)| (*original, wrapper(&mut module, &metrics, *original, name)))
        .collect();
    let wrapper_ids: Vec<FunctionId> = wrappers.iter().map(|(_, wrapper)| *wrapper).collect();
    let mut redirect = Redirect { wrappers: &wrappers };
    for (id, function) in module.funcs.iter_local_mut() {
        if !wrapper_ids.contains(&id) {
            let entry = function.entry_block();
            walrus::ir::dfs_pre_order_mut(&mut redirect, function, entry);
        }
    }
    Ok(module.emit_wasm())
}

/// The imports a wrapper counts through.
struct Metrics {
    memory: MemoryId,
    define: FunctionId,
    increment: FunctionId,
}

/// The module's import `env.name`, added with the given signature if it lacks it.
fn import_function(module: &mut Module, name: &str, params: &[ValType], results: &[ValType]) -> FunctionId {
    let existing = module.imports.iter().find_map(|import| match import.kind {
        walrus::ImportKind::Function(function) if import.name == name => Some(function),
        _ => None,
    });
    existing.unwrap_or_else(|| {
        let ty = module.types.add(params, results);
        module.add_import_func("env", name, ty).0
    })
}

/// A function with `original`'s signature that counts a call, then makes it.
fn wrapper(module: &mut Module, metrics: &Metrics, original: FunctionId, name: &str) -> FunctionId {
    let ty = module.types.get(module.funcs.get(original).ty());
    let (params, results) = (ty.params().to_vec(), ty.results().to_vec());
    let counter = format!("{COUNTER_PREFIX}{}", name.strip_prefix("proxy_").unwrap_or(name));
    let id: GlobalId = module.globals.add_local(
        ValType::I32,
        true,
        false,
        ConstExpr::Value(walrus::ir::Value::I32(UNDEFINED)),
    );
    let arguments: Vec<_> = params.iter().map(|ty| module.locals.add(*ty)).collect();
    let page = module.locals.add(ValType::I32);
    let mut builder = FunctionBuilder::new(&mut module.types, &params, &results);
    builder.name(format!("count_{name}"));
    let memory = metrics.memory;
    let byte = MemArg { align: 1, offset: 0 };
    builder
        .func_body()
        .global_get(id)
        .i32_const(UNDEFINED)
        .binop(BinaryOp::I32Eq)
        .if_else(
            None,
            |define| {
                // A page of our own, its index in `page`; its address is the index times 64 KiB.
                define
                    .i32_const(1)
                    .memory_grow(memory)
                    .local_tee(page)
                    .i32_const(-1)
                    .binop(BinaryOp::I32Eq)
                    .if_else(
                        None,
                        |failed| {
                            failed.i32_const(UNAVAILABLE).global_set(id);
                        },
                        |grown| {
                            grown.local_get(page).i32_const(16).binop(BinaryOp::I32Shl).local_set(page);
                            for (offset, value) in counter.bytes().enumerate() {
                                grown.local_get(page).i32_const(i32::from(value)).store(
                                    memory,
                                    StoreKind::I32_8 { atomic: false },
                                    MemArg { offset: offset as u32, ..byte },
                                );
                            }
                            grown
                                .i32_const(METRIC_COUNTER)
                                .local_get(page)
                                .i32_const(counter.len() as i32)
                                .local_get(page)
                                .i32_const(ID_OFFSET as i32)
                                .binop(BinaryOp::I32Add)
                                .call(metrics.define)
                                .if_else(
                                    None,
                                    |refused| {
                                        refused.i32_const(UNAVAILABLE).global_set(id);
                                    },
                                    |defined| {
                                        defined
                                            .local_get(page)
                                            .load(
                                                memory,
                                                LoadKind::I32 { atomic: false },
                                                MemArg { align: 4, offset: ID_OFFSET },
                                            )
                                            .global_set(id);
                                    },
                                );
                        },
                    );
            },
            |_| {},
        )
        .global_get(id)
        .i32_const(0)
        .binop(BinaryOp::I32GeS)
        .if_else(
            None,
            |count| {
                count.global_get(id).i64_const(1).call(metrics.increment).drop();
            },
            |_| {},
        );
    let mut body = builder.func_body();
    for argument in &arguments {
        body.local_get(*argument);
    }
    body.call(original);
    builder.finish(arguments, &mut module.funcs)
}

/// Sends the module's own calls of each import to its wrapper.
struct Redirect<'a> {
    wrappers: &'a [(FunctionId, FunctionId)],
}

impl VisitorMut for Redirect<'_> {
    fn visit_instr_mut(&mut self, instr: &mut Instr, _: &mut InstrLocId) {
        let target = match instr {
            Instr::Call(call) => &mut call.func,
            Instr::ReturnCall(call) => &mut call.func,
            _ => return,
        };
        if let Some((_, wrapper)) = self.wrappers.iter().find(|(original, _)| original == target) {
            *target = *wrapper;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrus::{FunctionKind, LocalFunction};

    /// The functions `function` calls directly.
    fn callees(function: &LocalFunction) -> Vec<FunctionId> {
        struct Calls(Vec<FunctionId>);
        impl<'instr> walrus::ir::Visitor<'instr> for Calls {
            fn visit_call(&mut self, call: &walrus::ir::Call) {
                self.0.push(call.func);
            }
        }
        let mut calls = Calls(Vec::new());
        walrus::ir::dfs_in_order(&mut calls, function, function.entry_block());
        calls.0
    }

    const FILTER: &str = r#"
        (module
          (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
            (drop (call $get (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 12)))
            (drop (call $log (i32.const 2) (i32.const 16) (i32.const 4)))
            (call $get (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 12))))
    "#;

    fn parse(wasm: &[u8]) -> Module {
        Module::from_buffer(wasm).expect("the instrumented module is valid Wasm")
    }

    fn function_named(module: &Module, name: &str) -> FunctionId {
        module.funcs.by_name(name).unwrap_or_else(|| panic!("no function {name}"))
    }

    fn import_named(module: &Module, name: &str) -> FunctionId {
        module
            .imports
            .iter()
            .find_map(|import| match import.kind {
                walrus::ImportKind::Function(function) if import.name == name => Some(function),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no import {name}"))
    }

    fn local(module: &Module, id: FunctionId) -> &LocalFunction {
        match &module.funcs.get(id).kind {
            FunctionKind::Local(function) => function,
            _ => panic!("not a local function"),
        }
    }

    #[test]
    fn every_call_of_an_import_goes_through_its_counting_wrapper() {
        let wasm = wat::parse_str(FILTER).expect("test module");
        let module = parse(&count_host_calls(&wasm).expect("instrumented"));
        let handler = module.exports.iter().find(|export| export.name == "proxy_on_request_body");
        let walrus::ExportItem::Function(handler) = handler.expect("export kept").item else {
            panic!("not a function")
        };
        let (count_get, count_log) = (
            function_named(&module, "count_proxy_get_buffer_bytes"),
            function_named(&module, "count_proxy_log"),
        );
        assert_eq!(callees(local(&module, handler)), vec![count_get, count_log, count_get]);
        // Each wrapper defines its counter and bumps it through the original imports, then calls
        // its own original: the counting is not counted.
        let (define, increment) =
            (import_named(&module, "proxy_define_metric"), import_named(&module, "proxy_increment_metric"));
        assert_eq!(
            callees(local(&module, count_get)),
            vec![define, increment, import_named(&module, "proxy_get_buffer_bytes")]
        );
        assert_eq!(
            callees(local(&module, count_log)),
            vec![define, increment, import_named(&module, "proxy_log")]
        );
    }

    #[test]
    fn the_wrapper_writes_its_counters_name_byte_by_byte() {
        let wasm = wat::parse_str(FILTER).expect("test module");
        let module = parse(&count_host_calls(&wasm).expect("instrumented"));
        struct Stores(Vec<u8>);
        impl<'instr> walrus::ir::Visitor<'instr> for Stores {
            fn visit_const(&mut self, constant: &walrus::ir::Const) {
                if let walrus::ir::Value::I32(value) = constant.value
                    && let Ok(byte) = u8::try_from(value)
                    && byte.is_ascii_lowercase() | (byte == b'_')
                {
                    self.0.push(byte);
                }
            }
        }
        let wrapper = local(&module, function_named(&module, "count_proxy_log"));
        let mut stores = Stores(Vec::new());
        walrus::ir::dfs_in_order(&mut stores, wrapper, wrapper.entry_block());
        assert!(String::from_utf8_lossy(&stores.0).contains("whisk_hostcall_log"), "{:?}", stores.0);
    }

    #[test]
    fn a_module_without_the_metric_imports_gets_them() {
        let wasm = wat::parse_str(FILTER).expect("test module");
        let module = parse(&count_host_calls(&wasm).expect("instrumented"));
        let define = import_named(&module, "proxy_define_metric");
        let ty = module.types.get(module.funcs.get(define).ty());
        assert_eq!((ty.params(), ty.results()), (&[ValType::I32; 4][..], &[ValType::I32][..]));
    }

    #[test]
    fn a_module_without_memory_is_refused() {
        let wasm =
            wat::parse_str(r#"(module (import "env" "proxy_log" (func (param i32 i32 i32) (result i32))))"#)
                .expect("test module");
        assert!(matches!(count_host_calls(&wasm), Err(InstrumentError::NoMemory)));
    }
}
