import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { SignatureError, parseSigningKeys, verifySignature } from "@datalayer/client";

// The lines of queue.push.signing_key_file: the current key, then the next one.
const keys = parseSigningKeys(readFileSync(process.env.SIGNING_KEY_FILE ?? "/etc/datalayer/push-keys", "utf8"));
// Exactly the URL given to setDestination: the service signs that string.
const url = process.env.PUSH_URL ?? "https://hooks.example.com/analyses";
const port = Number(process.env.PORT ?? 8080);
const seen = new Set<string>(); // at least once: skip a message seen before (use a database in production)

createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes: verify them before parsing
    try {
      const claims = verifySignature(body, req.headers["datalayer-signature"], keys, url);
      const id = `${req.headers["datalayer-queue"]}/${claims.jti}`; // ids count from 1 in each queue
      if (!seen.has(id)) {
        seen.add(id);
        console.log(`message ${claims.jti}, attempt ${req.headers["datalayer-attempt"]}: ${body}`);
      }
      res.writeHead(204).end(); // a 2xx acks the message; anything else is a failed attempt
    } catch (e) {
      const refused = e instanceof SignatureError;
      res.writeHead(refused ? 401 : 500).end(refused ? e.reason : "error");
    }
  });
}).listen(port, () => console.log(`listening on ${port}`));
