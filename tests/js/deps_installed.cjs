// Exits 0 when every dependency named in package.json is installed in node_modules, 1 otherwise: the test suite's
// `npm ci` step runs only then (so a lock file that gained a package is installed again, without a list to keep).
const fs = require('fs');
const path = require('path');
const pkg = require('./package.json');
const names = Object.keys({ ...(pkg.dependencies || {}), ...(pkg.devDependencies || {}) });
const missing = names.filter((n) => !fs.existsSync(path.join(__dirname, 'node_modules', n, 'package.json')));
if (missing.length) console.log(`missing: ${missing.join(', ')}`);
process.exit(missing.length ? 1 : 0);
