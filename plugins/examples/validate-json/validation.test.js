// The decisions of validation.js in plain Node.js: `node --test` here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, isJsonContentType, parseSettings, validateBody } from './validation.js';

const enc = new TextEncoder();
const bytes = (s) => enc.encode(s);

const refusal = (config) => {
  try {
    parseSettings(JSON.stringify(config));
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.message;
  }
  assert.fail(`accepted ${JSON.stringify(config)}`);
};

test('defaults', () => {
  for (const config of ['', '{}']) {
    const s = parseSettings(config);
    assert.deepEqual([...s.methods], ['POST', 'PUT', 'PATCH']);
    assert.equal(s.maxBodyBytes, 65536);
    assert.deepEqual(s.required, []);
    assert.deepEqual(s.types, []);
    assert.equal(s.maxDepth, 32);
  }
});

test('bad settings name their place', () => {
  assert.equal(refusal({ require: ['id'] }).split(' (')[0], 'at `require`: unknown setting');
  assert.match(refusal({ methods: [] }), /^at `methods`: must be a non-empty list/);
  assert.match(refusal({ methods: 'POST' }), /^at `methods`: /);
  assert.match(refusal({ methods: ['POST', 'GET /'] }), /^at `methods\[1\]`: must be an HTTP method/);
  assert.equal(refusal({ methods: ['post'] }), 'at `methods[0]`: methods are case-sensitive; write "POST"');
  assert.match(refusal({ max_body_bytes: 0 }), /^at `max_body_bytes`: must be an integer from 1 to 16777216/);
  assert.match(refusal({ max_body_bytes: 16 * 1024 * 1024 + 1 }), /^at `max_body_bytes`: /);
  assert.match(refusal({ max_body_bytes: 1.5 }), /^at `max_body_bytes`: /);
  assert.match(refusal({ max_body_bytes: '64k' }), /^at `max_body_bytes`: /);
  assert.match(refusal({ required: 'id' }), /^at `required`: must be a list/);
  assert.match(refusal({ required: ['id', 3] }), /^at `required\[1\]`: must be a string/);
  assert.match(refusal({ types: ['id'] }), /^at `types`: must be a table/);
  assert.match(refusal({ types: { age: 'integer' } }), /^at `types\.age`: the type of "age" must be one of "string", /);
  assert.match(refusal({ types: { 'a.b': 'int' } }), /^at `types`: the type of "a\.b"/);
  assert.match(refusal({ max_depth: 0 }), /^at `max_depth`: must be an integer from 1 to 1024/);
  assert.equal(parseSettings(JSON.stringify({ max_body_bytes: 16 * 1024 * 1024 })).maxBodyBytes, 16777216);
});

test('content types', () => {
  for (const ok of [
    'application/json',
    'Application/JSON',
    'application/json; charset=utf-8',
    'application/json;charset="UTF-8"',
    'application/problem+json',
    'application/vnd.api+json; ext=x',
  ]) {
    assert.ok(isJsonContentType(bytes(ok)), ok);
  }
  for (const no of [undefined, '', 'text/plain', 'application/jsonx', 'application/+json', 'json', 'application/json; charset=utf-16', 'text/json']) {
    assert.ok(!isJsonContentType(no === undefined ? undefined : bytes(no)), String(no));
  }
});

test('bodies', () => {
  const s = parseSettings(JSON.stringify({ required: ['id', 'name'], types: { id: 'number', tags: 'array', meta: 'object' }, max_depth: 3 }));
  const check = (body) => validateBody(bytes(body), s);

  assert.deepEqual(check('{"id": 1, "name": "a", "tags": [], "meta": {"x": [1]}}'), { result: 'valid' });
  assert.deepEqual(check('{"id": 1, "name": null}'), { result: 'valid' }, 'present is present, null or not');

  const empty = check('');
  assert.equal(empty.status, 400);
  assert.deepEqual(empty.error, { error: 'invalid-json', detail: 'the body is empty' });
  const broken = check('{"id": 1,');
  assert.equal(broken.status, 400);
  assert.equal(broken.error.error, 'invalid-json');
  assert.equal(typeof broken.error.detail, 'string');
  assert.equal(validateBody(new Uint8Array([0x7b, 0xff, 0x7d]), s).error.detail, 'the body is not UTF-8');

  assert.deepEqual(check('{"id": 1}').error, { error: 'missing-key', key: 'name' });
  assert.equal(check('{"id": 1}').status, 422);
  assert.deepEqual(check('{"id": "1", "name": "a"}').error, { error: 'wrong-type', key: 'id', expected: 'number', found: 'string' });
  assert.deepEqual(check('{"id": 1, "name": "a", "meta": []}').error, { error: 'wrong-type', key: 'meta', expected: 'object', found: 'array' });
  assert.deepEqual(check('{"id": 1, "name": "a", "tags": null}').error, { error: 'wrong-type', key: 'tags', expected: 'array', found: 'null' });
  assert.equal(check('[1]').error.error, 'not-an-object');
  assert.equal(check('"id"').status, 422);

  const deep = check('{"id": 1, "name": "a", "meta": {"x": [[1]]}}');
  assert.equal(deep.status, 422);
  assert.deepEqual(deep.error, { error: 'too-deep', max_depth: 3, pointer: '/meta/x/0', key: 'meta' });
  assert.deepEqual(check('{"a/b~": [[[]]], "id": 1}').error.pointer, '/a~1b~0/0/0');
  // Brackets inside strings are not nesting.
  assert.deepEqual(check('{"id": 1, "name": "[[[[{{{{"}'), { result: 'valid' });

  // With no keys to check, any JSON text is valid.
  const any = parseSettings('{}');
  assert.deepEqual(validateBody(bytes('[1, 2]'), any), { result: 'valid' });
  assert.deepEqual(validateBody(bytes('null'), any), { result: 'valid' });
  const nested = '['.repeat(33) + ']'.repeat(33);
  assert.equal(validateBody(bytes(nested), any).error.pointer, `/${Array(32).fill(0).join('/')}`);
  assert.deepEqual(validateBody(bytes('['.repeat(32) + ']'.repeat(32)), any), { result: 'valid' });
});

test('nesting', () => {
  const at = (body, max) => validateBody(bytes(body), parseSettings(JSON.stringify({ max_depth: max })));
  assert.deepEqual(at('[[]]', 2), { result: 'valid' });
  assert.deepEqual(at('[[[]]]', 2).error, { error: 'too-deep', max_depth: 2, pointer: '/0/0' });
  assert.deepEqual(at('[{"a": [1]}, [], {}]', 3), { result: 'valid' });
  assert.deepEqual(at('[1, {"a": [[1]]}]', 3).error.pointer, '/1/a/0');
  // Brackets inside strings are not nesting.
  assert.deepEqual(at('["[[[[", "\\"[[[[", {"k\\\\": "]]]"}]', 2), { result: 'valid' });
  assert.deepEqual(at('{"a": [], "b": [], "c": [], "d": {"e": 1}}', 2), { result: 'valid' });
  assert.deepEqual(at('{"a": [], "b": {"__proto__": {"c": [1]}}}', 3).error, { error: 'too-deep', max_depth: 3, pointer: '/b/__proto__/c', key: 'b' });
  // As deep as the settings allow, without running out of stack.
  const deepest = '['.repeat(1024) + ']'.repeat(1024);
  assert.deepEqual(at(deepest, 1024), { result: 'valid' });
  assert.equal(at(`[${deepest}]`, 1024).error.error, 'too-deep');
});
