package appconfig

import (
	"strconv"
	"strings"
)

// keyLines finds the line on which each key of a TOML document is defined,
// because BurntSushi/toml does not export key positions. Paths use the same
// spelling as error messages: "services[1].ports[0].port".
//
// It runs only on input the TOML parser accepted, so it need not diagnose
// anything; but it must never panic or loop on any input, because a fuzzer
// (and a buggy caller) can hand it anything. Every loop consumes input.
// maxNesting bounds the recursion into nested arrays and inline tables, so
// that a hostile file cannot grow the stack; Fly's files nest two deep.
const maxNesting = 32

type keyLines struct {
	src   string
	pos   int
	line  int
	lines map[string]int
	// arrays counts the elements of each array of tables seen so far, keyed
	// by its resolved path, so that [[services.ports]] after the second
	// [[services]] resolves to services[1].ports[n].
	arrays map[string]int
}

// indexLines returns path -> 1-based line.
func indexLines(src string) map[string]int {
	k := &keyLines{src: src, line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	k.document()
	return k.lines
}

// lineOf returns the line of path, or of its nearest ancestor that has one
// (an inline table's keys are on the line of the table), or 0.
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

func (k *keyLines) peek(off int) byte {
	if k.pos+off < len(k.src) {
		return k.src[k.pos+off]
	}
	return 0
}

func (k *keyLines) advance() {
	if k.pos < len(k.src) {
		if k.src[k.pos] == '\n' {
			k.line++
		}
		k.pos++
	}
}

// skipSpace skips blanks, and newlines and comments when nl is true.
func (k *keyLines) skipSpace(nl bool) {
	for k.pos < len(k.src) {
		switch c := k.src[k.pos]; {
		case c == ' ' || c == '\t' || c == '\r':
			k.advance()
		case c == '\n' && nl:
			k.advance()
		case c == '#' && nl:
			for k.pos < len(k.src) && k.src[k.pos] != '\n' {
				k.advance()
			}
		default:
			return
		}
	}
}

func (k *keyLines) document() {
	table := ""
	for k.pos < len(k.src) {
		k.skipSpace(true)
		if k.pos >= len(k.src) {
			return
		}
		start := k.pos
		if k.peek(0) == '[' {
			table = k.header()
		} else {
			k.keyValue(table, 0)
		}
		// Skip the rest of the line (a trailing comment) and guarantee progress.
		for k.pos < len(k.src) && k.src[k.pos] != '\n' {
			k.advance()
		}
		if k.pos == start {
			k.advance()
		}
	}
}

// header reads [a.b] or [[a.b]] and returns the resolved table path.
func (k *keyLines) header() string {
	line := k.line
	k.advance()
	array := k.peek(0) == '['
	if array {
		k.advance()
	}
	k.skipSpace(false)
	keys := k.key()
	path := ""
	for i, key := range keys {
		path = join(path, key)
		if array && i == len(keys)-1 {
			if _, ok := k.lines[path]; !ok {
				k.lines[path] = line // the array's first element
			}
			n := k.arrays[path]
			k.arrays[path] = n + 1
			path += "[" + strconv.Itoa(n) + "]"
		} else if n, ok := k.arrays[path]; ok && n > 0 {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
		if _, ok := k.lines[path]; !ok || i == len(keys)-1 {
			k.lines[path] = line
		}
	}
	return path
}

// keyValue reads key = value inside table and records the key's line.
func (k *keyLines) keyValue(table string, depth int) {
	line := k.line
	keys := k.key()
	if len(keys) == 0 {
		return
	}
	path := table
	for _, key := range keys {
		path = join(path, key)
		if _, ok := k.lines[path]; !ok {
			k.lines[path] = line
		}
	}
	k.skipSpace(false)
	if k.peek(0) != '=' {
		return
	}
	k.advance()
	k.skipSpace(false)
	k.value(path, depth)
}

// key reads a dotted key of bare and quoted parts.
func (k *keyLines) key() []string {
	var keys []string
	for k.pos < len(k.src) {
		k.skipSpace(false)
		var part string
		switch c := k.peek(0); {
		case c == '"' || c == '\'':
			part = k.str()
		case isBare(c):
			s := k.pos
			for k.pos < len(k.src) && isBare(k.src[k.pos]) {
				k.advance()
			}
			part = k.src[s:k.pos]
		default:
			return keys
		}
		keys = append(keys, part)
		k.skipSpace(false)
		if k.peek(0) != '.' {
			return keys
		}
		k.advance()
	}
	return keys
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// str reads a basic, literal or multi-line string and returns its raw body
// (escapes are not decoded: keys that need escapes are not Fly's).
func (k *keyLines) str() string {
	q := k.peek(0)
	if k.peek(1) == q && k.peek(2) == q {
		for range 3 {
			k.advance()
		}
		s := k.pos
		for k.pos < len(k.src) {
			if q == '"' && k.src[k.pos] == '\\' {
				k.advance()
				k.advance()
				continue
			}
			if k.peek(0) == q && k.peek(1) == q && k.peek(2) == q {
				body := k.src[s:k.pos]
				for range 3 {
					k.advance()
				}
				// Up to two more quotes may belong to the body.
				for range 2 {
					if k.peek(0) == q {
						k.advance()
					}
				}
				return body
			}
			k.advance()
		}
		return k.src[s:]
	}
	k.advance()
	s := k.pos
	for k.pos < len(k.src) && k.src[k.pos] != '\n' {
		c := k.src[k.pos]
		if q == '"' && c == '\\' {
			k.advance()
			if k.peek(0) != '\n' {
				k.advance()
			}
			continue
		}
		if c == q {
			body := k.src[s:k.pos]
			k.advance()
			return body
		}
		k.advance()
	}
	return k.src[s:k.pos]
}

// value skips one value, recording the lines of inline tables' keys and of
// array elements (path[i]).
func (k *keyLines) value(path string, depth int) {
	if depth > maxNesting {
		return // the caller's progress guard moves on
	}
	switch c := k.peek(0); c {
	case '"', '\'':
		k.str()
	case '{':
		k.advance()
		for k.pos < len(k.src) {
			k.skipSpace(true)
			if c := k.peek(0); c == '}' || c == 0 {
				k.advance()
				return
			}
			start := k.pos
			k.keyValue(path, depth+1)
			k.skipSpace(true)
			if k.peek(0) == ',' {
				k.advance()
			}
			if k.pos == start {
				k.advance()
			}
		}
	case '[':
		k.advance()
		for i := 0; k.pos < len(k.src); i++ {
			k.skipSpace(true)
			if c := k.peek(0); c == ']' || c == 0 {
				k.advance()
				return
			}
			start := k.pos
			elem := path + "[" + strconv.Itoa(i) + "]"
			k.lines[elem] = k.line
			k.value(elem, depth+1)
			k.skipSpace(true)
			if k.peek(0) == ',' {
				k.advance()
			}
			if k.pos == start {
				k.advance()
			}
		}
	default:
		// A bare scalar: number, boolean or datetime.
		for k.pos < len(k.src) {
			switch k.src[k.pos] {
			case ',', ']', '}', '\n', '#':
				return
			}
			k.advance()
		}
	}
}

// join appends key to a dotted path, quoting a key that is empty or not a
// bare TOML key, so that messages stay unambiguous.
func join(path, key string) string {
	if key == "" || strings.IndexFunc(key, func(r rune) bool { return r >= 0x80 || !isBare(byte(r)) }) >= 0 {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}
