// Tags each request with the shard its path hashes to (FNV-1a, 32 bit),
// so upstream caches and partitioned services agree on who owns a path.
const utf8 = new TextEncoder();
let header = 'x-shard';
let shards = 16;

export const filter = {
  configure(config) {
    const c = JSON.parse(config);
    header = c.header ?? header;
    shards = c.shards ?? shards;
    if (!/^[a-z0-9-]+$/.test(header)) throw `shard-header: bad header name ${header}`;
    if (!Number.isInteger(shards) || shards < 1) throw 'shard-header: shards must be a positive integer';
  },
  onRequest(req) {
    let hash = 0x811c9dc5;
    for (const byte of utf8.encode(req.path())) {
      hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
    }
    req.setHeader(header, utf8.encode(String(hash % shards)));
    return { tag: 'continue' };
  },
  onResponse(req, resp) {
    return { tag: 'continue' };
  },
};
