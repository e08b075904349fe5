// The slice driven by the official OpenWhisk JavaScript client, unchanged: the platform is started
// by the Rust test e2e/tests/js_client.rs, which passes the API host and key in OW_APIHOST and OW_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import openwhisk from 'openwhisk';

const apihost = process.env.OW_APIHOST;
const apiKey = process.env.OW_KEY;

test('the official client creates, invokes, reads back and deletes actions', { skip: !apihost }, async () => {
  const ow = openwhisk({ apihost, api_key: apiKey });

  const created = await ow.actions.create({
    name: 'js-hello',
    action: "function main(p) { console.log('js client says', p.name); return { greeting: 'hello ' + p.name }; }",
    kind: 'nodejs:20',
    overwrite: true,
  });
  assert.equal(created.name, 'js-hello');
  assert.equal(created.exec.kind, 'nodejs:20');

  const fetched = await ow.actions.get({ name: 'js-hello' });
  assert.equal(fetched.namespace, 'guest');
  assert.ok(fetched.limits && fetched.version);

  const listed = await ow.actions.list();
  assert.ok(listed.some((action) => action.name === 'js-hello'));

  const record = await ow.actions.invoke({ name: 'js-hello', params: { name: 'npm' }, blocking: true });
  assert.equal(record.response.status, 'success');
  assert.deepEqual(record.response.result, { greeting: 'hello npm' });
  assert.ok(record.logs.some((line) => line.includes('js client says npm')), JSON.stringify(record.logs));

  const result = await ow.actions.invoke({ name: 'js-hello', params: { name: 'again' }, blocking: true, result: true });
  assert.deepEqual(result, { greeting: 'hello again' });

  const python = await ow.actions.create({
    name: 'js-hello-py',
    action: "def main(args):\n    return {'py': args.get('name')}\n",
    kind: 'python:3',
    overwrite: true,
  });
  assert.equal(python.exec.kind, 'python:3');
  const pyResult = await ow.actions.invoke({ name: 'js-hello-py', params: { name: 'snake' }, blocking: true, result: true });
  assert.deepEqual(pyResult, { py: 'snake' });

  const queued = await ow.actions.invoke({ name: 'js-hello', params: { name: 'later' } });
  assert.match(queued.activationId, /^[0-9a-f]{32}$/);
  let stored;
  for (let attempt = 0; attempt < 200 && !stored; attempt++) {
    try {
      stored = await ow.activations.get({ name: queued.activationId });
    } catch (error) {
      if (error.statusCode !== 404) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  assert.ok(stored, 'the non-blocking activation was stored');
  assert.deepEqual(stored.response.result, { greeting: 'hello later' });
  const logs = await ow.activations.logs({ name: queued.activationId });
  assert.ok(logs.logs.some((line) => line.includes('js client says later')));
  const storedResult = await ow.activations.result({ name: queued.activationId });
  assert.deepEqual(storedResult.result, { greeting: 'hello later' });

  await assert.rejects(ow.actions.invoke({ name: 'does-not-exist', blocking: true }), (error) => {
    assert.equal(error.statusCode, 404);
    return true;
  });
  const stranger = openwhisk({ apihost, api_key: '23bc46b1-71f6-4ed5-8c54-816aa4f8c502:nope' });
  await assert.rejects(stranger.actions.list(), (error) => {
    assert.equal(error.statusCode, 401);
    return true;
  });

  await ow.actions.delete({ name: 'js-hello' });
  await ow.actions.delete({ name: 'js-hello-py' });
  await assert.rejects(ow.actions.get({ name: 'js-hello' }), (error) => error.statusCode === 404);
});
