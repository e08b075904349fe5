// Every other resource through the official client, as wsk drives it: packages with parameters and a
// binding, actions inside them, a trigger fired through its rule, rules disabled and enabled,
// activations listed with filters, a web action, and an action given the invoking key
// (provide-api-key). Started by e2e/tests/js_client.rs with OW_APIHOST and OW_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import openwhisk from 'openwhisk';

const apihost = process.env.OW_APIHOST;
const apiKey = process.env.OW_KEY;

async function eventually(what, probe, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const GREET = 'function main(p) { return { text: p.greeting + " " + p.who }; }';

test('packages, bindings, triggers, rules, activations and web actions through the client', { skip: !apihost }, async () => {
  const ow = openwhisk({ apihost, api_key: apiKey });

  // A package with default parameters, an action in it, and a binding that overrides one of them.
  await ow.packages.create({
    name: 'tools', overwrite: true,
    package: { parameters: [{ key: 'greeting', value: 'hello' }, { key: 'who', value: 'world' }] },
  });
  await ow.actions.create({ name: 'tools/greet', action: GREET, kind: 'nodejs:20', overwrite: true });
  const tools = await ow.packages.get({ name: 'tools' });
  assert.deepEqual(tools.actions.map((action) => action.name), ['greet']);
  await ow.packages.create({
    name: 'mytools', overwrite: true,
    package: { binding: { namespace: 'guest', name: 'tools' }, parameters: [{ key: 'who', value: 'binding' }] },
  });
  const packages = (await ow.packages.list()).map((p) => p.name);
  assert.ok(packages.includes('tools') && packages.includes('mytools'), packages.join(','));
  assert.deepEqual(await ow.actions.invoke({ name: 'tools/greet', blocking: true, result: true }), { text: 'hello world' });
  assert.deepEqual(await ow.actions.invoke({ name: 'mytools/greet', blocking: true, result: true }), { text: 'hello binding' });
  assert.deepEqual(
    await ow.actions.invoke({ name: 'mytools/greet', params: { who: 'caller' }, blocking: true, result: true }),
    { text: 'hello caller' });

  // A trigger fired through the client runs its rule's action; a disabled rule does not.
  await ow.triggers.create({ name: 'nudge', overwrite: true, trigger: { parameters: [{ key: 'who', value: 'trigger' }] } });
  await ow.rules.create({ name: 'nudge-greet', trigger: 'nudge', action: 'tools/greet', overwrite: true });
  const since = Date.now();
  const fired = await ow.triggers.invoke({ name: 'nudge' });
  assert.ok(fired.activationId, JSON.stringify(fired));
  const ruled = await eventually('the rule\'s activation', async () => {
    const list = await ow.activations.list({ name: 'greet', since, docs: true });
    return list.find((record) => record.response && record.response.result && record.response.result.text === 'hello trigger');
  });
  assert.equal(ruled.name, 'greet');
  await ow.rules.disable({ name: 'nudge-greet' });
  assert.equal((await ow.rules.get({ name: 'nudge-greet' })).status, 'inactive');
  await ow.rules.enable({ name: 'nudge-greet' });
  assert.equal((await ow.rules.get({ name: 'nudge-greet' })).status, 'active');
  assert.ok((await ow.triggers.list()).some((t) => t.name === 'nudge'));
  assert.ok((await ow.rules.list()).some((r) => r.name === 'nudge-greet'));

  // Activations with filters: by name, within a window, paged, newest first.
  const upto = Date.now();
  const greets = await ow.activations.list({ name: 'greet', since, upto, limit: 5 });
  assert.ok(greets.length >= 1 && greets.every((record) => record.name === 'greet'), JSON.stringify(greets));
  const all = await ow.activations.list({ limit: 3 });
  assert.ok(all.length === 3, `three of many: ${all.length}`);
  assert.ok(all[0].start >= all[1].start && all[1].start >= all[2].start, 'newest first');
  const skipped = await ow.activations.list({ limit: 1, skip: 1 });
  assert.equal(skipped[0].activationId, all[1].activationId);

  // A web action, created as `wsk action create --web true` does, answers without a key.
  await ow.actions.create({
    name: 'page', kind: 'nodejs:20', overwrite: true,
    action: 'function main(p) { return { body: "<p>hi " + (p.name || "you") + "</p>" }; }',
    annotations: { 'web-export': true, 'raw-http': false, final: true },
  });
  const page = await fetch(`${apihost}/api/v1/web/guest/default/page?name=web`);
  assert.equal(page.status, 200);
  assert.equal(await page.text(), '<p>hi web</p>');

  // provide-api-key: the action gets the invoking key (and only then).
  const WHO = 'function main() { return { key: process.env.__OW_API_KEY || null }; }';
  await ow.actions.create({ name: 'keyed', action: WHO, kind: 'nodejs:20', overwrite: true, annotations: { 'provide-api-key': true } });
  await ow.actions.create({ name: 'keyless', action: WHO, kind: 'nodejs:20', overwrite: true });
  assert.deepEqual(await ow.actions.invoke({ name: 'keyed', blocking: true, result: true }), { key: apiKey });
  assert.deepEqual(await ow.actions.invoke({ name: 'keyless', blocking: true, result: true }), { key: null });

  for (const name of ['nudge-greet']) await ow.rules.delete({ name });
  await ow.triggers.delete({ name: 'nudge' });
  await ow.packages.delete({ name: 'mytools' });
  for (const name of ['tools/greet', 'page', 'keyed', 'keyless']) await ow.actions.delete({ name });
  await ow.packages.delete({ name: 'tools' });
});
