// Numbers and counts as text, with a fixed locale so readouts are the same in every
// browser and under node. No DOM here.

// 1234567 -> "1,234,567"
export function int(n) {
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

// bytes with a binary unit, e.g. "22.5 KiB"
export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${int(v)} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

export function pct(x) {
  return `${(100 * x).toFixed(1)}%`;
}

// plural(1, 'block') -> "1 block", plural(3, 'block') -> "3 blocks"
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
