// The seed document's three examples, read from the Rust harness (tests/src/lib.rs, module
// `seed`) so that there is one copy of them in the repository.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const lib = readFileSync(fileURLToPath(new URL('../../../tests/src/lib.rs', import.meta.url)), 'utf8');
const seedModule = lib.slice(lib.indexOf('pub mod seed {'));

function constant(name) {
  const m = seedModule.match(new RegExp(`pub const ${name}: &str = r#"(.*)"#;`));
  if (!m) throw new Error(`tests/src/lib.rs: seed::${name} not found`);
  return m[1];
}

/** `{type, location, data}` JSON texts, as published. */
export const seed = {
  message: constant('MESSAGE'),
  newConversation: constant('NEW_CONVERSATION'),
  notification: constant('NOTIFICATION'),
};
