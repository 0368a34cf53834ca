#!/usr/bin/env node
// N clients open the same (new) doc at the same instant, each writes its key, and each waits until
// it sees everybody's key.   node crowd.mjs <server> <doc> <token> [N]
// Prints {"clients": N, "views": [sorted keys seen by each client]}.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [server, docName, token, count = '20'] = process.argv.slice(2)
const n = Number(count)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const clients = Array.from({ length: n }, () => {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server, docName, doc, {
    params: { token }, WebSocketPolyfill: WebSocket, disableBc: true, connect: false
  })
  return { doc, provider }
})
clients.forEach(({ provider }) => provider.connect()) // all sockets opened in the same tick
const deadline = Date.now() + 60000
while (!clients.every(({ provider }) => provider.synced)) {
  if (Date.now() > deadline) throw new Error('not every client synced')
  await sleep(5)
}
clients.forEach(({ doc }, i) => doc.getMap('m').set(`p${i}`, i))
while (!clients.every(({ doc }) => doc.getMap('m').size === n)) {
  if (Date.now() > deadline) break
  await sleep(5)
}
const views = clients.map(({ doc }) => Object.keys(doc.getMap('m').toJSON()).sort())
await new Promise((resolve) => process.stdout.write(JSON.stringify({ clients: n, views }) + '\n', resolve))
clients.forEach(({ provider }) => provider.destroy())
await sleep(100)
process.exit(0)
