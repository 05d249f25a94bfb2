package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/devgate/devgate/api"
	"github.com/devgate/devgate/peers"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func runOrgs(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "usage: devgate orgs create NAME | devgate orgs list")
		return errUsage
	}
	fs := flags(e, "orgs "+args[0])
	switch args[0] {
	case "create":
		pos, err := parse(fs, args[1:], 1)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("name the organization: devgate orgs create NAME")
		}
		org, err := e.client().CreateOrg(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "Created organization %s\n", org.Name)
	case "list":
		if _, err := parse(fs, args[1:], 0); err != nil {
			return err
		}
		orgs, err := e.client().ListOrgs(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCREATED AT")
		for _, o := range orgs {
			fmt.Fprintf(tw, "%s\t%s\n", o.Name, o.CreatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	default:
		return fmt.Errorf("unknown orgs command %q; use create or list", args[0])
	}
	return nil
}

func runWireguard(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "usage: devgate wireguard create|list|remove ...")
		return errUsage
	}
	switch args[0] {
	case "create":
		return wgCreate(ctx, e, args[1:])
	case "list":
		return wgList(ctx, e, args[1:])
	case "remove":
		return wgRemove(ctx, e, args[1:])
	}
	return fmt.Errorf("unknown wireguard command %q; use create, list or remove", args[0])
}

func wgCreate(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "wireguard create")
	network := fs.String("network", "default", "the organization's network to join")
	qr := fs.Bool("qr", false, "also print the config as a QR code, for the mobile WireGuard apps")
	pos, err := parse(fs, args, 4)
	if err != nil {
		return err
	}
	c := e.client()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	prompts := []struct{ what, def string }{{"organization", "personal"}, {"region", st.Region}, {"peer name", ""}, {"file name (or stdout)", ""}}
	for i := len(pos); i < len(prompts); i++ {
		if !isTerminal(e.stdin) {
			names := []string{"ORG", "REGION", "NAME", "FILE"}
			return fmt.Errorf("missing %s; usage: devgate wireguard create ORG REGION NAME FILE (no terminal to ask on)", strings.Join(names[len(pos):], " "))
		}
		v, err := prompt(e, prompts[i].what, prompts[i].def)
		if err != nil {
			return err
		}
		if i == 3 && v == "" {
			v = fmt.Sprintf("devgate-%s-%s.conf", pos[1], pos[2])
		}
		pos = append(pos, v)
	}
	org, region, name, file := pos[0], pos[1], pos[2], pos[3]
	// Refuse to clobber before anything is stored, so a typo costs nothing.
	var out *os.File
	if file != "stdout" {
		out, err = os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s already exists; choose another file name or remove it first", file)
			}
			return fmt.Errorf("cannot write %s: %w", file, err)
		}
	}
	conf, err := createPeer(ctx, c, api.CreatePeerRequest{Org: org, Network: *network, Region: region, Name: name})
	if err != nil {
		if out != nil {
			out.Close()
			os.Remove(file)
		}
		return err
	}
	if *qr {
		code, err := qrTerminal(string(conf.Render()))
		if err != nil {
			return err
		}
		fmt.Fprint(e.stdout, code)
	}
	if out == nil {
		if *qr {
			return nil // the QR code is the output
		}
		_, err = e.stdout.Write(conf.Render())
		return err
	}
	if _, err := out.Write(conf.Render()); err != nil {
		out.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	fmt.Fprintf(e.stdout, "!!!! WARNING: Output includes private key. Private keys cannot be recovered !!!!\n")
	fmt.Fprintf(e.stdout, "!!!! after creating the peer; if you lose the key, you'll need to remove    !!!!\n")
	fmt.Fprintf(e.stdout, "!!!! and re-add the peering connection.                                     !!!!\n")
	fmt.Fprintf(e.stdout, "Wrote WireGuard configuration to %s; load in your WireGuard client (or: sudo wg-quick up ./%s)\n", file, file)
	return nil
}

// createPeer makes a key pair here, registers only the public half, and
// returns the laptop's config.
func createPeer(ctx context.Context, c *api.Client, req api.CreatePeerRequest) (*peers.Config, error) {
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	req.PublicKey = priv.PublicKey().String()
	res, err := c.CreatePeer(ctx, req)
	if err != nil {
		return nil, err
	}
	gw, err := wgtypes.ParseKey(res.GatewayPublicKey)
	if err != nil {
		return nil, fmt.Errorf("gateway sent an unreadable public key: %w", err)
	}
	return peers.ClientConfig(priv, gw, res.Peer.Address, res.NetworkPrefix, res.Endpoint), nil
}

func wgList(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "wireguard list")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	org := ""
	if len(pos) == 1 {
		org = pos[0]
	}
	ps, err := e.client().ListPeers(ctx, org)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ps)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tORG\tREGION\tPEER IP\tLAST HANDSHAKE\tRX\tTX")
	for _, p := range ps {
		hs := "never"
		if !p.LastHandshake.IsZero() {
			hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.Name, p.Org, p.Region, p.Address, hs, p.RxBytes, p.TxBytes)
	}
	return tw.Flush()
}

func wgRemove(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "wireguard remove")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("usage: devgate wireguard remove ORG NAME")
	}
	if err := e.client().DeletePeer(ctx, pos[0], pos[1]); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "Removed WireGuard peer %s from organization %s\n", pos[1], pos[0])
	return nil
}

func isTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func prompt(e *env, what, def string) (string, error) {
	if def != "" {
		fmt.Fprintf(e.stderr, "? %s (%s): ", what, def)
	} else {
		fmt.Fprintf(e.stderr, "? %s: ", what)
	}
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	if line = strings.TrimSpace(line); line == "" {
		line = def
	}
	return line, nil
}
