// Builds the dispatcher app (index.html, served at /app/) and the operator console (admin.html,
// served at /admin/) into the Python package (api/app_static), served by `webhost-sync serve`
// (api/webapp.py). Both pages share the hashed files under assets/ (/app/assets/): cached for a year.
import { resolve } from 'node:path'
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
    chunkSizeWarningLimit: 1000,
    rollupOptions: {
      input: {
        app: resolve(import.meta.dirname, 'index.html'),
        admin: resolve(import.meta.dirname, 'admin.html')
      }
    }
  }
})
