// Raw JSON spans: the exact text of a member or of array elements, so that `data` can be
// handed to the application byte for byte as the backend published it (JSON.parse would
// reformat numbers and lose nothing else, but some apps verify signatures or hashes).

/** Index just past the JSON value that starts at `i` (after whitespace), or -1. */
function valueEnd(text, i) {
  let depth = 0;
  let inString = false;
  for (; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') {
        inString = false;
        if (depth === 0) return i + 1;
      }
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      if (depth === 0) return i;
      depth--;
      if (depth === 0) return i + 1;
    } else if (c === ',' && depth === 0) return i;
  }
  return depth === 0 && !inString ? i : -1;
}

function skipSpace(text, i) {
  while (i < text.length && ' \t\r\n'.includes(text[i])) i++;
  return i;
}

/**
 * The exact text of the top-level member `name` of the JSON object `text`, or undefined.
 * @param {string} text @param {string} name @returns {string | undefined}
 */
export function rawMember(text, name) {
  let i = skipSpace(text, 0);
  if (text[i] !== '{') return undefined;
  i = skipSpace(text, i + 1);
  while (i < text.length && text[i] === '"') {
    const keyEnd = valueEnd(text, i);
    if (keyEnd < 0) return undefined;
    const key = JSON.parse(text.slice(i, keyEnd));
    i = skipSpace(text, keyEnd);
    if (text[i] !== ':') return undefined;
    const start = skipSpace(text, i + 1);
    const end = valueEnd(text, start);
    if (end < 0) return undefined;
    if (key === name) return text.slice(start, end).trimEnd();
    i = skipSpace(text, end);
    if (text[i] !== ',') return undefined;
    i = skipSpace(text, i + 1);
  }
  return undefined;
}

/**
 * The exact texts of the elements of the JSON array `text` (empty when it is not an array).
 * @param {string} text @returns {string[]}
 */
export function rawElements(text) {
  const out = [];
  let i = skipSpace(text, 0);
  if (text[i] !== '[') return out;
  i = skipSpace(text, i + 1);
  while (i < text.length && text[i] !== ']') {
    const end = valueEnd(text, i);
    if (end < 0) return out;
    out.push(text.slice(i, end).trimEnd());
    i = skipSpace(text, end);
    if (text[i] === ',') i = skipSpace(text, i + 1);
  }
  return out;
}
