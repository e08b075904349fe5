// Sequences driven by the official OpenWhisk JavaScript client, unchanged: the platform is started by
// the Rust test e2e/tests/sequences.rs, which passes the API host and key in OW_APIHOST and OW_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import openwhisk from 'openwhisk';

const apihost = process.env.OW_APIHOST;
const apiKey = process.env.OW_KEY;

test('the official client creates, reads and invokes a sequence', { skip: !apihost }, async () => {
  const ow = openwhisk({ apihost, api_key: apiKey });

  await ow.actions.create({
    name: 'js-seq-upper',
    action: 'function main(p) { return { text: String(p.text).toUpperCase() }; }',
    kind: 'nodejs:20',
    overwrite: true,
  });
  await ow.actions.create({
    name: 'js-seq-exclaim',
    action: "def main(args):\n    return {'text': args['text'] + '!'}\n",
    kind: 'python:3',
    overwrite: true,
  });

  // The client sends {exec: {kind: 'sequence', components: [...]}}, as wsk does.
  const created = await ow.actions.create({
    name: 'js-seq',
    sequence: ['/_/js-seq-upper', '/_/js-seq-exclaim'],
    overwrite: true,
  });
  assert.equal(created.exec.kind, 'sequence');
  assert.deepEqual(created.exec.components, ['/guest/js-seq-upper', '/guest/js-seq-exclaim']);

  const fetched = await ow.actions.get({ name: 'js-seq' });
  assert.deepEqual(fetched.exec.components, created.exec.components);

  const result = await ow.actions.invoke({ name: 'js-seq', params: { text: 'hi' }, blocking: true, result: true });
  assert.deepEqual(result, { text: 'HI!' });

  const record = await ow.actions.invoke({ name: 'js-seq', params: { text: 'yo' }, blocking: true });
  assert.deepEqual(record.response.result, { text: 'YO!' });
  assert.equal(record.logs.length, 2);
  assert.ok(record.annotations.some((a) => a.key === 'kind' && a.value === 'sequence'), JSON.stringify(record));

  await assert.rejects(
    ow.actions.create({ name: 'js-seq-bad', sequence: ['/_/js-seq-upper', '/_/no-such-action'] }),
    (error) => {
      assert.equal(error.statusCode, 400);
      assert.match(error.message, /Sequence component does not exist/);
      return true;
    },
  );

  await ow.actions.delete({ name: 'js-seq' });
  await ow.actions.delete({ name: 'js-seq-upper' });
  await ow.actions.delete({ name: 'js-seq-exclaim' });
});
