// Test filter: prints each path it sees to standard output, and throws on
// paths with "raise" in them, so the tests can find both in the gateway's log.
function refuse(path) {
  throw new Error(`raise-js refuses ${path}`);
}

export const filter = {
  configure(config) {},
  onRequest(req) {
    const path = req.path();
    console.log(`raise-js saw ${path}`);
    if (path.includes('raise')) refuse(path);
    return { tag: 'continue' };
  },
  onResponse(req, resp) {
    return { tag: 'continue' };
  },
};
