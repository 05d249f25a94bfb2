package machines

import (
	"fmt"
	"os"
	"sync"
)

// defaultLogLimit is the size at which a machine's log is rotated to
// <LogPath>.1 (replacing any older one), so a chatty machine uses at most
// twice this on disk.
const defaultLogLimit = 8 << 20

// logWriter appends a machine's output to a size-bounded file.
type logWriter struct {
	path  string
	limit int64
	logf  func(string, ...any)

	mu     sync.Mutex
	f      *os.File
	size   int64
	failed bool // a write error was logged; log only the first
}

func openLog(path string, limit int64, logf func(string, ...any)) (*logWriter, error) {
	if limit <= 0 {
		limit = defaultLogLimit
	}
	w := &logWriter{path: path, limit: limit, logf: logf}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *logWriter) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open machine log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open machine log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write never fails: an error would stop exec's copy goroutine, and the
// machine would then block on a full pipe. A lost log line is better.
// A write that would cross the limit is split, so no file exceeds it.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	total := len(p)
	for len(p) > 0 && w.f != nil {
		if w.size >= w.limit {
			w.rotate()
			continue
		}
		chunk := p[:min(int64(len(p)), w.limit-w.size)]
		n, err := w.f.Write(chunk)
		w.size += int64(n)
		p = p[len(chunk):]
		if err != nil {
			if !w.failed {
				w.failed = true
				w.logf("machine log %s: %v; dropping output", w.path, err)
			}
			break
		}
	}
	return total, nil
}

// rotate moves the full log to .1 and starts a new one. If that fails the
// log is truncated instead, and if even that fails output is dropped: the
// size bound holds in every case.
func (w *logWriter) rotate() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		w.logf("machine log %s: rotate: %v", w.path, err)
	}
	if err := w.open(); err != nil {
		w.logf("machine log %s: %v; dropping output", w.path, err)
		return
	}
	if w.size >= w.limit {
		if err := w.f.Truncate(0); err != nil {
			w.logf("machine log %s: truncate: %v; dropping output", w.path, err)
			w.f.Close()
			w.f = nil
			return
		}
		w.size = 0
	}
}

// Close closes the file; later writes are dropped.
func (w *logWriter) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			w.logf("machine log %s: %v", w.path, err)
		}
		w.f = nil
	}
	w.size = 0
}
