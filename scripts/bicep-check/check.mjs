// Parses .bicep files with the tree-sitter Bicep grammar (WebAssembly, so no
// native build) and reports every syntax error with its position. This is a
// syntax check only: types, API versions and property names need the real
// Bicep compiler (`az bicep build`), which cannot be installed here.
//
//   node check.mjs FILE...    exit 0 when every file parses, 1 otherwise
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Parser, Language } from 'web-tree-sitter';

const here = fileURLToPath(new URL('.', import.meta.url));
await Parser.init();
const parser = new Parser();
parser.setLanguage(await Language.load(here + 'node_modules/tree-sitter-bicep/tree-sitter-bicep.wasm'));

function errors(name, text) {
  const tree = parser.parse(text);
  const out = [];
  const walk = (n) => {
    if (n.isError || n.isMissing) {
      out.push(`${name}:${n.startPosition.row + 1}:${n.startPosition.column + 1}: ${n.isMissing ? 'missing ' + n.type : 'syntax error'}`);
    }
    for (const c of n.children) walk(c);
  };
  if (tree.rootNode.hasError) walk(tree.rootNode);
  return out;
}

// The check must be able to fail: a broken snippet has to be reported, or the
// grammar did not load as expected and a pass would mean nothing.
if (errors('self-test', 'param x string =\nresource y').length === 0) {
  console.error('bicep-check: the grammar accepted a broken file; the check itself is broken');
  process.exit(2);
}

let bad = 0;
for (const f of process.argv.slice(2)) {
  const errs = errors(f, fs.readFileSync(f, 'utf8'));
  errs.forEach((e) => console.error(e));
  bad += errs.length;
}
console.log(`bicep-check: ${process.argv.length - 2} files, ${bad} syntax errors`);
process.exit(bad ? 1 : 0);
