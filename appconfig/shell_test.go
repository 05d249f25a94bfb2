package appconfig

import (
	"reflect"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{"  bin/server  --port 8080 ", []string{"bin/server", "--port", "8080"}, false},
		{`sh -c 'echo "a b"; exit 1'`, []string{"sh", "-c", `echo "a b"; exit 1`}, false},
		{`echo "a \"b\" \$HOME \n"`, []string{"echo", `a "b" $HOME \n`}, false},
		{`a\ b c''d ""`, []string{"a b", "cd", ""}, false},
		{`echo 'x`, nil, true},
		{`echo "x`, nil, true},
		{`echo x\`, nil, true},
	}
	for _, tt := range tests {
		got, err := splitCommand(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("splitCommand(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitCommand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
