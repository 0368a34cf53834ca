// A TypeScript app written against the published declarations (`npm run build` checks it with
// tsc: a changed signature or a missing export fails the build). Nothing here runs.
import { connect, validateFix, InvalidFixError, trackDoc, utcDay, type Y } from "@webhost/sync-client";
import { fileStorage } from "@webhost/sync-client/node";
import { indexeddbStorage } from "@webhost/sync-client/indexeddb";
import type { SyncStatus, DocStatus } from "@webhost/sync-client";

export async function phone(backend: string): Promise<SyncStatus> {
  const session = connect({
    url: "https://sync.example.com",
    customer: "acme-freight",
    getToken: async () => {
      const res = await fetch(`${backend}/sync-token`);
      const body = (await res.json()) as { token: string; expires_at: string };
      return { token: body.token, expiresAt: new Date(body.expires_at) };
    },
    storage: fileStorage("/tmp/phone"),
    backoff: { baseMs: 500, maxMs: 30_000 },
  });
  const truck = session.tracker("truck-7");
  try {
    const at: { doc: string; day: string; t: number } = truck.record({ t: Date.now(), lat: 52.5, lng: 13.4, speed: 12 });
    const expected: string = trackDoc("truck-7", utcDay(at.t));
    if (expected !== at.doc) throw new Error("day routing");
  } catch (err) {
    if (err instanceof InvalidFixError) {
      const reason: "malformed" | "out_of_range" | "null_island" = err.reason;
      console.warn(reason, err.index);
    } else throw err;
  }
  const perDay: Record<string, number> = truck.recordAll([{ lat: 1, lng: 2 }]);
  void perDay;
  const rejected: Record<string, number> = truck.feedback().rejected;
  void rejected;
  truck.on("feedback", (day) => console.log(day.materialized, day.quota?.reached));

  const dispatch = session.open("dispatch");
  await dispatch.whenLoaded;
  const jobs: Y.Map<unknown> = dispatch.doc.getMap("jobs");
  jobs.set("j1", "open");
  dispatch.on("status", (s: DocStatus) => console.log(s.doc, s.status, s.pending));
  dispatch.on("refused", ({ code, reason }) => console.log(code, reason));
  session.on("status", ({ status, pending }) => console.log(status, pending));
  await dispatch.whenDurable();
  return session.status;
}

export const browserStore = indexeddbStorage({ prefix: "app" });
export const checked = validateFix({ t: 0, lat: 1, lng: 2 }).t;
