package flycast

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
)

// framing follows the HTTP/1.1 message framing of the bytes the http
// server reads from one client connection, to tell the handler what
// net/http hides: whether a request carried both Content-Length and
// Transfer-Encoding. net/http follows RFC 9112 and drops Content-Length
// before the handler runs; devgate refuses such a request instead (400),
// as a request-smuggling attempt, since no honest client sends both.
//
// It reads only header lines byte by byte; bodies are skipped by length.
// Anything it cannot follow (a line over the header limit, a malformed
// length) makes it stop, which leaves net/http's own checks in charge.
type framing struct {
	mu        sync.Mutex
	state     frameState
	line      []byte // the partial line being read, at most maxLine
	seenStart bool   // the request line of the current message was read
	hasCL     bool
	hasTE     bool
	chunked   bool
	cl        int64
	remaining int64  // body or chunk bytes left to skip
	conflicts []bool // one per complete header block, oldest first
	stopped   bool
}

type frameState int

const (
	frameHeaders frameState = iota
	frameBody
	frameChunkSize
	frameChunkData
	frameTrailers
)

// maxLine bounds a header line the tracker buffers; the http server
// refuses longer header blocks (431) anyway.
const maxLine = httpMaxHeaderBytes

// maxQueuedFrames bounds header blocks read ahead of their handlers
// (pipelining); beyond it the tracker stops rather than grow.
const maxQueuedFrames = 64

// feed consumes bytes in the order the server read them.
func (f *framing) feed(p []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(p) > 0 && !f.stopped {
		switch f.state {
		case frameBody, frameChunkData:
			n := int64(len(p))
			if n > f.remaining {
				n = f.remaining
			}
			p = p[n:]
			f.remaining -= n
			if f.remaining == 0 {
				if f.state == frameBody {
					f.reset()
				} else {
					f.state = frameChunkSize
				}
			}
		default:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				f.appendLine(p)
				return
			}
			f.appendLine(p[:i])
			p = p[i+1:]
			if f.stopped {
				return
			}
			line := strings.TrimSuffix(string(f.line), "\r")
			f.line = f.line[:0]
			f.endLine(line)
		}
	}
}

func (f *framing) appendLine(b []byte) {
	if len(f.line)+len(b) > maxLine {
		f.stopped = true
		return
	}
	f.line = append(f.line, b...)
}

func (f *framing) endLine(line string) {
	switch f.state {
	case frameHeaders:
		if line == "" {
			if !f.seenStart {
				return // blank lines before a request line are allowed
			}
			f.endHeaders()
			return
		}
		if !f.seenStart {
			f.seenStart = true
			return
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				f.stopped = true // net/http answers 400 itself
				return
			}
			f.hasCL, f.cl = true, n
		case "transfer-encoding":
			f.hasTE = true
			codings := strings.Split(value, ",")
			f.chunked = strings.EqualFold(strings.TrimSpace(codings[len(codings)-1]), "chunked")
		}
	case frameChunkSize:
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 {
			f.stopped = true
			return
		}
		if n == 0 {
			f.state = frameTrailers
			return
		}
		f.state, f.remaining = frameChunkData, n+2 // data and its CRLF
	case frameTrailers:
		if line == "" {
			f.reset()
		}
	}
}

func (f *framing) endHeaders() {
	conflict := f.hasCL && f.hasTE
	if len(f.conflicts) >= maxQueuedFrames {
		f.stopped = true
		return
	}
	f.conflicts = append(f.conflicts, conflict)
	switch {
	case conflict:
		f.stopped = true // the handler refuses it and closes the conn
	case f.hasTE && f.chunked:
		f.state = frameChunkSize
	case f.hasTE:
		f.stopped = true // read-until-close body: nothing follows it
	case f.hasCL && f.cl > 0:
		f.state, f.remaining = frameBody, f.cl
	default:
		f.reset()
	}
}

func (f *framing) reset() {
	f.state = frameHeaders
	f.seenStart, f.hasCL, f.hasTE, f.chunked, f.cl, f.remaining = false, false, false, false, 0, 0
}

// conflict reports whether the oldest request not yet asked about carried
// both Content-Length and Transfer-Encoding. The server calls handlers in
// the order it read the requests, so this is the handler's own request.
func (f *framing) conflict() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.conflicts) == 0 {
		return false
	}
	c := f.conflicts[0]
	f.conflicts = f.conflicts[1:]
	return c
}
