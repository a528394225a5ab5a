// A Node.js upstream for tests/paths.rs, routing as hand-written Node services commonly do:
// the WHATWG URL parser (which resolves `%2e` dot segments and reads `\` as `/`), then
// decodeURIComponent. It answers which of its routes served the request.
const http = require("http");

http
  .createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, "http://upstream").pathname);
    } catch (e) {
      res.writeHead(400);
      res.end("bad path\n");
      return;
    }
    const admin = path === "/admin" || path.startsWith("/admin/");
    res.end(admin ? "route=admin\n" : "route=open\n");
  })
  .listen(Number(process.argv[2]), "127.0.0.1");
