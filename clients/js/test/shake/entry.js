// The tree-shaking check of test/lib.test.mjs: an app that only validates fixes bundles no Yjs.
import { validateFix } from '@webhost/sync-client'
console.log(validateFix({ lat: 1, lng: 2 }))
