// Builds the dispatcher app into the Python package (api/app_static), served at /app/ by
// `webhost-sync serve` (api/webapp.py). Hashed file names under assets/: cached for a year.
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/app/',
  // @webhost/sync-client is linked from clients/js (file:): one copy of yjs and its kin, the app's
  resolve: { dedupe: ['yjs', 'lib0', 'y-protocols', 'y-indexeddb'] },
  build: {
    outDir: '../api/app_static',
    emptyOutDir: true,
    assetsDir: 'assets',
    assetsInlineLimit: 0, // every asset a file of its own (CSP: no data: scripts or styles)
    sourcemap: false,
    chunkSizeWarningLimit: 1000
  }
})
