// The feed lifecycle as wsk and the official client drive it: the client invokes the trigger's feed
// action with lifecycleEvent CREATE / DELETE, the trigger's name and the caller's key; this feed
// action answers by firing the trigger through the platform's API host (from inside the action), and
// the trigger's rule runs its action. Started by e2e/tests/js_client.rs with OW_APIHOST and OW_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import openwhisk from 'openwhisk';

const apihost = process.env.OW_APIHOST;
const apiKey = process.env.OW_KEY;

// Fires the trigger named in triggerName ("/namespace/name") once on CREATE, with the caller's key.
const FEED = `async function main(p) {
  const [, namespace, name] = p.triggerName.split('/');
  if (p.lifecycleEvent === 'DELETE') return { deleted: p.triggerName };
  const auth = 'Basic ' + Buffer.from(p.authKey).toString('base64');
  const url = process.env.__OW_API_HOST + '/api/v1/namespaces/' + namespace + '/triggers/' + name;
  const fired = await fetch(url, { method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' },
                                   body: JSON.stringify({ tick: p.tick }) });
  return { lifecycleEvent: p.lifecycleEvent, fired: fired.status };
}`;

test('a feed action created through the client fires its trigger, whose rule runs', { skip: !apihost }, async () => {
  const ow = openwhisk({ apihost, api_key: apiKey });
  await ow.actions.create({ name: 'ticker-feed', action: FEED, kind: 'nodejs:20', overwrite: true });
  await ow.actions.create({ name: 'on-tick', action: 'function main(p) { return { tick: p.tick }; }', kind: 'nodejs:20', overwrite: true });
  await ow.triggers.create({ name: 'ticks', overwrite: true, trigger: { annotations: [{ key: 'feed', value: '/_/ticker-feed' }] } });
  await ow.rules.create({ name: 'ticks-to-on-tick', trigger: 'ticks', action: 'on-tick', overwrite: true });

  const created = await ow.feeds.create({ name: 'ticker-feed', trigger: 'ticks', params: { tick: 'first' } });
  assert.equal(created.response.success, true, JSON.stringify(created));
  assert.deepEqual(created.response.result, { lifecycleEvent: 'CREATE', fired: 202 });

  let seen;
  for (let attempt = 0; attempt < 100 && !seen; attempt++) {
    const activations = await ow.activations.list({ name: 'on-tick', docs: true });
    seen = activations.find((a) => a.response && a.response.result && a.response.result.tick === 'first');
    if (!seen) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(seen, 'the rule ran its action with the feed-fired payload');

  const deleted = await ow.feeds.delete({ name: 'ticker-feed', trigger: 'ticks' });
  assert.deepEqual(deleted.response.result, { deleted: '/_/ticks' });
});
