// What validate-json decides, with no gateway bindings: its settings, which
// requests carry JSON, and whether a body is the JSON the route expects.
// filter.js imports it into the component; test.mjs imports it into plain
// Node.js (`node --test`), so the decisions are tested without a gateway.

export const MIB = 1024 * 1024;
// The contract's ceiling for a body a filter buffers (body-limit.max-bytes).
export const MAX_BODY_BYTES_CEILING = 16 * MIB;
export const MAX_DEPTH_CEILING = 1024;
export const TYPES = ['string', 'number', 'boolean', 'object', 'array'];
const SETTINGS = ['methods', 'max_body_bytes', 'required', 'types', 'max_depth'];
const DEFAULTS = {
  methods: ['POST', 'PUT', 'PATCH'],
  max_body_bytes: 65536,
  required: [],
  types: {},
  max_depth: 32,
};
// Every outcome the filter counts, so each series can start at zero.
export const RESULTS = [
  'valid',
  'unsupported-media-type',
  'invalid-json',
  'not-an-object',
  'missing-key',
  'wrong-type',
  'too-deep',
];
// An HTTP method is a token (RFC 9110, 5.6.2).
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** A setting is wrong. The message follows the gateway's ``at `PATH`: ``
 * convention, so the load error points at the line in the TOML. */
export class ConfigError {
  constructor(message) {
    this.message = message;
  }
}

const refuse = (path, message) => {
  throw new ConfigError(`at \`${path}\`: ${message}`);
};

const isTable = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The settings in the filter's `[filters.NAME.config]` table, as the
 * gateway hands it over (JSON); throws ConfigError. */
export function parseSettings(configJson) {
  let config;
  try {
    config = configJson.trim() === '' ? {} : JSON.parse(configJson);
  } catch (e) {
    throw new ConfigError(`config is not JSON: ${e.message}`);
  }
  if (!isTable(config)) throw new ConfigError('config must be a table');
  // A misspelt setting would otherwise leave a default in force silently:
  // `require = [...]` would validate nothing.
  for (const key of Object.keys(config)) {
    if (!SETTINGS.includes(key)) {
      refuse(key, `unknown setting (expected one of ${SETTINGS.join(', ')})`);
    }
  }
  const s = { ...DEFAULTS, ...config };

  if (!Array.isArray(s.methods) || s.methods.length === 0) {
    refuse('methods', 'must be a non-empty list of HTTP methods, like ["POST", "PUT"]');
  }
  s.methods.forEach((m, i) => {
    if (typeof m !== 'string' || !TOKEN.test(m)) refuse(`methods[${i}]`, 'must be an HTTP method, like "POST"');
    // Methods are case-sensitive: "post" would match no request a client sends.
    if (m !== m.toUpperCase()) refuse(`methods[${i}]`, `methods are case-sensitive; write "${m.toUpperCase()}"`);
  });

  if (!Number.isInteger(s.max_body_bytes) || s.max_body_bytes < 1 || s.max_body_bytes > MAX_BODY_BYTES_CEILING) {
    refuse('max_body_bytes', `must be an integer from 1 to ${MAX_BODY_BYTES_CEILING} (16 MiB)`);
  }

  if (!Array.isArray(s.required)) refuse('required', 'must be a list of top-level keys');
  s.required.forEach((k, i) => {
    if (typeof k !== 'string') refuse(`required[${i}]`, 'must be a string');
  });

  if (!isTable(s.types)) refuse('types', 'must be a table of key = "string" | "number" | "boolean" | "object" | "array"');
  for (const [key, type] of Object.entries(s.types)) {
    if (!TYPES.includes(type)) {
      // A key the path syntax cannot spell is reported at the table.
      const path = /^[A-Za-z0-9_-]+$/.test(key) ? `types.${key}` : 'types';
      refuse(path, `the type of ${JSON.stringify(key)} must be one of ${TYPES.map((t) => `"${t}"`).join(', ')}`);
    }
  }

  if (!Number.isInteger(s.max_depth) || s.max_depth < 1 || s.max_depth > MAX_DEPTH_CEILING) {
    refuse('max_depth', `must be an integer from 1 to ${MAX_DEPTH_CEILING}`);
  }

  return {
    methods: new Set(s.methods),
    maxBodyBytes: s.max_body_bytes,
    required: [...new Set(s.required)],
    types: Object.entries(s.types),
    maxDepth: s.max_depth,
  };
}

const latin1 = (bytes) => String.fromCharCode(...bytes);

/** Whether a `content-type` value (bytes, or undefined when absent) names
 * JSON in UTF-8: application/json or a `+json` structured syntax
 * (application/problem+json, ...), with no charset or a UTF-8 one. */
export function isJsonContentType(value) {
  if (value === undefined || value === null) return false;
  const [essence, ...params] = latin1(value).split(';');
  const type = essence.trim().toLowerCase();
  const slash = type.indexOf('/');
  const subtype = type.slice(slash + 1);
  const json =
    type === 'application/json' ||
    (slash > 0 && subtype.endsWith('+json') && subtype.length > '+json'.length);
  if (!json) return false;
  // JSON is UTF-8 (RFC 8259, 8.1); a body labelled otherwise is not read as it.
  for (const p of params) {
    const eq = p.indexOf('=');
    if (eq < 0 || p.slice(0, eq).trim().toLowerCase() !== 'charset') continue;
    const charset = p.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase();
    if (charset !== 'utf-8' && charset !== 'utf8') return false;
  }
  return true;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

const typeOf = (v) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/** Whether `text` holds more than `max` opening brackets, counting no
 * further than max + 1 (brackets inside strings count too: this only rules
 * deep nesting out). `indexOf` runs natively; a JavaScript loop over the
 * characters costs tens of times the parse in the component. */
function manyBrackets(text, max) {
  let n = 0;
  for (const bracket of ['[', '{']) {
    for (let i = text.indexOf(bracket); i >= 0; i = text.indexOf(bracket, i + 1)) {
      if (++n > max) return true;
    }
  }
  return false;
}

/** Where an array or object of `value` (at `depth`) nests more than `max`
 * deep: the path to it as keys and indices, innermost first, or null. It
 * recurses at most max + 1 calls deep, which the settings keep at 1024. */
function tooDeep(value, depth, max) {
  if (depth > max) return [];
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const v = value[i];
      if (typeof v === 'object' && v !== null) {
        const path = tooDeep(v, depth + 1, max);
        if (path) return (path.push(i), path);
      }
    }
  } else {
    for (const key in value) {
      const v = value[key];
      if (typeof v === 'object' && v !== null) {
        const path = tooDeep(v, depth + 1, max);
        if (path) return (path.push(key), path);
      }
    }
  }
  return null;
}

/** A path (outermost first) as a JSON Pointer (RFC 6901). */
const pointer = (path) => path.map((p) => `/${String(p).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');

/** Checks a request body (bytes) against the settings. Answers
 * `{ result: 'valid' }`, or `{ result, status, error }` where `error` is
 * the JSON object the client gets back with `status`. */
export function validateBody(body, settings) {
  const invalid = (detail) => ({
    result: 'invalid-json',
    status: 400,
    error: { error: 'invalid-json', detail },
  });
  if (body.length === 0) return invalid('the body is empty');
  let text;
  try {
    text = utf8.decode(body);
  } catch {
    return invalid('the body is not UTF-8');
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return invalid(String(e.message));
  }

  // The top-level value is depth 1; nesting deeper than max_depth needs
  // more than max_depth opening brackets, which most small bodies lack.
  if (typeof doc === 'object' && doc !== null && manyBrackets(text, settings.maxDepth)) {
    const path = tooDeep(doc, 1, settings.maxDepth);
    if (path) {
      path.reverse();
      const error = { error: 'too-deep', max_depth: settings.maxDepth, pointer: pointer(path) };
      if (!Array.isArray(doc)) error.key = path[0]; // the top-level key it is under
      return { result: 'too-deep', status: 422, error };
    }
  }

  if (settings.required.length === 0 && settings.types.length === 0) return { result: 'valid' };
  if (typeOf(doc) !== 'object') {
    return {
      result: 'not-an-object',
      status: 422,
      error: { error: 'not-an-object', detail: `the body is JSON ${typeOf(doc)}, not an object` },
    };
  }
  for (const key of settings.required) {
    if (!Object.hasOwn(doc, key)) {
      return { result: 'missing-key', status: 422, error: { error: 'missing-key', key } };
    }
  }
  for (const [key, expected] of settings.types) {
    if (!Object.hasOwn(doc, key)) continue;
    const found = typeOf(doc[key]);
    if (found !== expected) {
      return { result: 'wrong-type', status: 422, error: { error: 'wrong-type', key, expected, found } };
    }
  }
  return { result: 'valid' };
}
