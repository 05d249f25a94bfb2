package flycast

import "testing"

func TestFraming(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []bool // one flag per request, in order
	}{
		{"plain GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", []bool{false}},
		{"both headers", "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", []bool{true}},
		{"case and spaces", "POST / HTTP/1.1\r\ncontent-length:4\r\nTRANSFER-ENCODING :  chunked\r\n\r\n", []bool{true}},
		{"pipelined, CL body that looks like headers", "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n1234GET /b HTTP/1.1\r\nHost: a\r\n\r\n", []bool{false, false}},
		{"pipelined after chunks and trailers", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", []bool{false, true}},
		{"leading blank lines", "\r\n\r\nGET / HTTP/1.1\r\n\r\n", []bool{false}},
		{"bad length stops tracking", "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\nGET / HTTP/1.1\r\n\r\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Feed one byte at a time and all at once: reads split anywhere.
			for _, step := range []int{1, len(tc.in)} {
				var f framing
				for i := 0; i < len(tc.in); i += step {
					f.feed([]byte(tc.in[i:min(i+step, len(tc.in))]))
				}
				if len(f.conflicts) != len(tc.want) {
					t.Fatalf("step %d: %d requests seen, want %d (%v)", step, len(f.conflicts), len(tc.want), f.conflicts)
				}
				for i, w := range tc.want {
					if got := f.conflict(); got != w {
						t.Errorf("step %d: request %d conflict = %v, want %v", step, i, got, w)
					}
				}
				if f.conflict() {
					t.Errorf("step %d: a flag beyond the requests", step)
				}
			}
		})
	}
}

func FuzzFraming(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr framing
		fr.feed(data)
		if len(fr.conflicts) > maxQueuedFrames || len(fr.line) > maxLine {
			t.Fatalf("bounds exceeded: %d frames, %d line bytes", len(fr.conflicts), len(fr.line))
		}
	})
}
