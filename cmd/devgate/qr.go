package main

import (
	"fmt"

	qrcode "github.com/skip2/go-qrcode"
)

// qrTerminal renders text as a QR code with Unicode half blocks, two modules
// per character cell, dark on light, for the mobile WireGuard apps to scan.
// Medium error correction keeps a wg-quick file (about 300 bytes) small
// enough to fit an 80-column terminal.
func qrTerminal(text string) (string, error) {
	q, err := qrcode.New(text, qrcode.Medium)
	if err != nil {
		return "", fmt.Errorf("make QR code: %w", err)
	}
	return q.ToSmallString(false), nil
}
