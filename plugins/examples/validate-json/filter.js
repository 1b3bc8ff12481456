// Validates JSON request bodies before they reach the upstream (see
// README.md). A gateway:filter@0.2.0 filter: `configure` asks for the
// request body, and the decisions live in validation.js, which plain
// Node.js can test.
import { declareMetric, recordMetric, log, logEnabled } from 'gateway:filter/host@0.2.0';
import { ConfigError, RESULTS, isJsonContentType, parseSettings, validateBody } from './validation.js';

const utf8 = new TextEncoder();
const JSON_HEADERS = [['content-type', utf8.encode('application/json')]];

// Module state: an instance is configured once, then serves requests one
// at a time. Metric handles belong to the instance that declared them, so
// each instance declares its own.
let settings;
let validations;

const count = (result) => recordMetric(validations, [result], 1);

const respond = (status, error) => ({
  tag: 'respond',
  val: { status, headers: JSON_HEADERS, body: utf8.encode(JSON.stringify(error)) },
});

const debug = (message) => {
  if (logEnabled('debug')) log('debug', message());
};

export const filter = {
  // A thrown string is the `err` of result<needs, string>; a thrown Error
  // would trap instead, so every refusal is a string.
  configure(config) {
    let parsed;
    try {
      parsed = parseSettings(config);
    } catch (e) {
      throw e instanceof ConfigError ? e.message : `validate-json: ${e}`;
    }
    try {
      validations = declareMetric('counter', 'validations', ['result']);
    } catch (e) {
      throw `declaring the validations metric: ${e.payload ?? e}`;
    }
    settings = parsed;
    // Every series at zero, before any traffic.
    for (const result of RESULTS) recordMetric(validations, [result], 0);
    return {
      requestBody: { maxBytes: settings.maxBodyBytes, overLimit: { tag: 'refuse', val: 413 } },
      responseBody: undefined,
    };
  },

  onRequest(req) {
    if (!settings.methods.has(req.method())) return { tag: 'continue' };
    if (!isJsonContentType(req.header('content-type'))) {
      count('unsupported-media-type');
      return respond(415, {
        error: 'unsupported-media-type',
        detail: 'the body must be application/json (or a +json type) in UTF-8',
      });
    }
    let body;
    try {
      body = req.body();
    } catch (e) {
      // With over-limit `refuse` the gateway answers 413 before this call,
      // so `too-large` should not come; fail closed all the same.
      const why = e.payload ?? String(e);
      log('warn', `cannot read the request body: ${why}`);
      return why === 'too-large'
        ? respond(413, { error: 'body-too-large' })
        : respond(500, { error: 'body-unavailable' });
    }
    const outcome = validateBody(body, settings);
    count(outcome.result);
    if (outcome.result === 'valid') return { tag: 'continue' };
    debug(() => `refusing ${req.method()} ${req.path()} (${outcome.status}): ${JSON.stringify(outcome.error)}`);
    return respond(outcome.status, outcome.error);
  },

  onResponse(_req, _resp) {
    return { tag: 'continue' };
  },
};
