// The published JavaScript OpenFeature server SDK and flagd provider (RPC
// mode) against a datalayer server serving the flagd-testbed's flags.
//
//   node test.mjs <port>
//
// Run by tests/e2e/flagd/test_flagd_js.py, which started the server. Steps:
// the provider becomes ready; a boolean and a string evaluation; then the
// script prints `WAITING_FOR_CHANGE` and the Python side changes the flag
// `changing-flag` through FlagService (its defaultVariant foo -> bar); the
// provider must report a configuration change naming it, after which the flag
// evaluates to the new variant. Prints one JSON line per check, exits 0 when
// all passed.
import assert from 'node:assert/strict';
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node test.mjs <port>');
  process.exit(2);
}
const TIMEOUT_MS = 10_000;

function report(check, details) {
  console.log(JSON.stringify({ check, ...details }));
}

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms}ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  const provider = new FlagdProvider({
    host: '127.0.0.1',
    port,
    resolverType: 'rpc',
    cache: 'disabled',
    deadlineMs: 2000,
  });
  await within(TIMEOUT_MS, OpenFeature.setProviderAndWait('datalayer', provider), 'provider ready');
  const client = OpenFeature.getClient('datalayer');
  assert.equal(client.providerStatus, 'READY');
  report('ready', { status: client.providerStatus });

  const bool = await client.getBooleanDetails('boolean-flag', false);
  assert.equal(bool.value, true, JSON.stringify(bool));
  assert.equal(bool.variant, 'on', JSON.stringify(bool));
  assert.equal(bool.reason, 'STATIC', JSON.stringify(bool));
  assert.equal(bool.errorCode, undefined, JSON.stringify(bool));
  report('boolean', { value: bool.value, variant: bool.variant, reason: bool.reason });

  const str = await client.getStringDetails('string-flag', 'bye');
  assert.equal(str.value, 'hi', JSON.stringify(str));
  assert.equal(str.variant, 'greeting', JSON.stringify(str));
  assert.equal(str.reason, 'STATIC', JSON.stringify(str));
  report('string', { value: str.value, variant: str.variant, reason: str.reason });

  const before = await client.getStringDetails('changing-flag', 'fallback');
  assert.equal(before.value, 'foo', JSON.stringify(before));

  const changed = new Promise((resolve) => {
    client.addHandler(ProviderEvents.ConfigurationChanged, (details) => resolve(details));
  });
  // The Python side reads this line and changes the flag.
  console.log('WAITING_FOR_CHANGE');
  const details = await within(TIMEOUT_MS, changed, 'configuration-change event');
  assert.ok(
    (details?.flagsChanged ?? []).includes('changing-flag'),
    `changing-flag not in flagsChanged: ${JSON.stringify(details)}`,
  );
  report('change', { flagsChanged: details.flagsChanged });

  const after = await client.getStringDetails('changing-flag', 'fallback');
  assert.equal(after.value, 'bar', JSON.stringify(after));
  assert.equal(after.reason, 'STATIC', JSON.stringify(after));
  report('after-change', { value: after.value, variant: after.variant, reason: after.reason });

  await OpenFeature.close();
  report('done', {});
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err?.stack ?? String(err));
    process.exit(1);
  },
);
