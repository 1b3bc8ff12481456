// {{name}}: a gateway filter. Requests without the header named by the
// `require` setting are answered 403; the others go on, tagged with
// `x-{{name}}: seen`.
const utf8 = new TextEncoder();
let required = null;

export const filter = {
  // The filter's `[filters.NAME.config]` table, as JSON. Unknown keys are
  // refused, so a typo is reported at load rather than ignored; starting
  // the message with "at `KEY`: " has the gateway point at its line.
  configure(config) {
    const settings = JSON.parse(config);
    for (const key of Object.keys(settings)) {
      if (key !== 'require') throw `at \`${key}\`: {{name}}: unknown setting \`${key}\``;
    }
    required = settings.require ?? null;
  },
  onRequest(req) {
    if (required !== null && req.header(required) === undefined) {
      return {
        tag: 'respond',
        val: {
          status: 403,
          headers: [['content-type', utf8.encode('text/plain')]],
          body: utf8.encode(`missing header ${required}\n`),
        },
      };
    }
    req.setHeader('x-{{name}}', utf8.encode('seen'));
    return { tag: 'continue' };
  },
  onResponse(req, resp) {
    return { tag: 'continue' };
  },
};
