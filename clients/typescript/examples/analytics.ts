import { createClient } from "@datalayer/client";

const dl = createClient({ baseUrl: process.env.DATALAYER_URL ?? "http://localhost:50051" });

// track() only buffers: the events go out every second, or as soon as 500 wait.
const tracker = dl.analytics.tracker({ flushEvery: "1s", maxBatch: 500 });
for (const exchange of ["kraken", "kraken", "binance"]) {
  tracker.track("signals", { dims: { exchange }, uniqueId: "user:42" });
}
await tracker.close(); // sends what is left

for (const series of await dl.analytics.series("signals", { since: "1h", groupBy: ["exchange"] })) {
  console.log(series.dimensions.exchange, series.count);
}
console.log("users:", await dl.analytics.countUnique("signals", { since: "1h" }));
dl.close();
