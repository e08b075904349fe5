"""Action loop for Python actions, embedded in the action-runtime proxy (src/launchers/launcher.py).

Usage: python3 -u launcher.py [<entry file> <main function name>]

Without arguments the launcher starts on standby, before its code exists (a prewarmed container):
its first stdin line names the code, {"entry", "main", "cwd", "env"}, and `env` is set before the
code loads.

Protocol with the proxy:
  fd 3:   one JSON line after loading ({"ok": true} or {"error": "..."}), then one per activation
          ({"result": <value>} or {"error": "<Type>: <message>"}).
  stdin:  one JSON line per activation: {"value": <params>, "env": {"__OW_...": "..."}}.
          End of stdin means the proxy is gone: exit.
  stdout, stderr: the action's logs; after each answer the end marker is written on both.
"""

import asyncio
import importlib.util
import inspect
import json
import os
import sys
import threading
import time
import traceback

END_MARKER = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
OUTCOME_FD = 3


def describe(err):
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def send(outcome_file, outcome):
    try:
        line = json.dumps(outcome, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        line = json.dumps({"error": describe(err)}, ensure_ascii=False)
    outcome_file.write(line + "\n")
    outcome_file.flush()


def end_activation():
    for stream in (sys.stdout, sys.stderr):
        stream.write(END_MARKER + "\n")
        stream.flush()


def watch_parent():
    # stdin end-of-file is noticed only between activations; an action stuck in a loop would
    # outlive a killed proxy without this.
    parent = os.getppid()
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def load(entry, main_name):
    action_dir = os.path.dirname(os.path.abspath(entry))
    sys.path.insert(0, action_dir)
    activate = os.path.join(action_dir, "virtualenv", "bin", "activate_this.py")
    if os.path.isfile(activate):
        with open(activate, encoding="utf-8") as f:
            exec(compile(f.read(), activate, "exec"), {"__file__": activate})
    spec = importlib.util.spec_from_file_location("main__", entry)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {entry}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["main__"] = module
    spec.loader.exec_module(module)
    main = getattr(module, main_name, None)
    if not callable(main):
        return None
    return main


def reset_env(env):
    for name in [n for n in os.environ if n.startswith("__OW_")]:
        del os.environ[name]
    for name, value in (env or {}).items():
        os.environ[name] = str(value)


def serve(main, outcome_file):
    stdin = sys.stdin.buffer
    while True:
        raw = stdin.readline()
        if not raw:
            return
        if not raw.strip():
            continue
        try:
            message = json.loads(raw.decode("utf-8"))
            reset_env(message.get("env"))
            result = main(message.get("value", {}))
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            outcome = {"result": result}
        except (Exception, SystemExit) as err:
            traceback.print_exc(file=sys.stderr)
            outcome = {"error": describe(err)}
        send(outcome_file, outcome)
        end_activation()


def await_code():
    """On standby: waits for the line that names the code, and takes its directory and environment."""
    raw = sys.stdin.buffer.readline()
    if not raw:
        # The proxy stopped before any code came: nothing to report.
        os._exit(0)
    code = json.loads(raw.decode("utf-8"))
    os.chdir(code["cwd"])
    for name, value in (code.get("env") or {}).items():
        os.environ[name] = str(value)
    return code["entry"], code["main"]


def run():
    outcome_file = os.fdopen(OUTCOME_FD, "w", encoding="utf-8")
    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        entry, main_name = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else await_code()
        main = load(entry, main_name)
        if main is None:
            raise NameError(f"Action entrypoint '{main_name}' is not a function.")
    except (Exception, SystemExit) as err:
        traceback.print_exc(file=sys.stderr)
        send(outcome_file, {"error": describe(err)})
        end_activation()
        sys.exit(1)
    send(outcome_file, {"ok": True})
    end_activation()
    serve(main, outcome_file)


if __name__ == "__main__":
    run()
