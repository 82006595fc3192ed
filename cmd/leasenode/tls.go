package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/leasenode/leasenode/transport"
)

const tlsSynopsis = `Makes the files for mutual TLS, like consul tls. "ca create" makes a CA:
leasenode-ca.pem (give it to every node and client as --tls-ca) and
leasenode-ca-key.pem (keep it off the nodes; only "cert create" needs it).
"cert create --node" makes a node's certificate, node-ID.pem and
node-ID-key.pem: the node role (DNS SAN node.leasenode), its identity
(ID.node.leasenode), the addresses other nodes dial it at (--ip, --dns), and
both server and client use. "cert create --client" makes an API client
certificate, client-NAME.pem and client-NAME-key.pem: the client role only,
so the API accepts it and the node port refuses it. Keys are written 0600;
no file is ever overwritten.`

func (ap *app) tlsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tls ca|cert create [flags]", Short: "make a CA, node certificates and API client certificates (tls ca create, tls cert create)",
		Long: tlsSynopsis, Args: cobra.ArbitraryArgs, RunE: ap.action(subcommandNeeded)}
	ca := &cobra.Command{Use: "ca create", Short: "make a CA", Long: tlsSynopsis, Args: cobra.ArbitraryArgs, RunE: ap.action(subcommandNeeded)}
	caCreate := &cobra.Command{Use: "create [--dir DIR] [--days N]", Short: "make a CA: leasenode-ca.pem and leasenode-ca-key.pem", Long: tlsSynopsis, Args: nargs(0, 0)}
	caOpts := caOptions{
		dir:  caCreate.Flags().String("dir", ".", "directory to write the CA files into"),
		days: caCreate.Flags().Int("days", 1825, "how long the CA is valid, in days"),
		name: caCreate.Flags().String("name", "leasenode CA", "the CA's common name"),
	}
	caCreate.RunE = ap.action(func(context.Context, *cobra.Command, []string) error { return tlsCACreate(caOpts) })
	ca.AddCommand(caCreate)
	cert := &cobra.Command{Use: "cert create", Short: "make a node or API client certificate", Long: tlsSynopsis, Args: cobra.ArbitraryArgs, RunE: ap.action(subcommandNeeded)}
	certCreate := &cobra.Command{Use: "create --node ID --ip IP[,IP] [--dns NAME[,NAME]] | --client [--name NAME] [flags]",
		Short: "make a node certificate (--node) or an API client certificate (--client)", Long: tlsSynopsis, Args: nargs(0, 0)}
	fs := certCreate.Flags()
	certOpts := certOptions{
		dir:    fs.String("dir", ".", "directory holding the CA files and receiving the certificate"),
		caCert: fs.String("ca", "", "CA certificate (default DIR/"+caCertFile+")"),
		caKey:  fs.String("ca-key", "", "CA private key (default DIR/"+caKeyFile+")"),
		days:   fs.Int("days", 365, "how long the certificate is valid, in days"),
		id:     fs.String("node", "", "make a node certificate for this node ID (the agent's --id)"),
		ips:    fs.String("ip", "", "with --node: IP addresses other nodes and clients dial it at, comma-separated"),
		dns:    fs.String("dns", "", "with --node: extra DNS names, comma-separated"),
		client: fs.Bool("client", false, "make an API client certificate (no node role)"),
		name:   fs.String("name", "client", "with --client: the client's name"),
	}
	_ = certCreate.MarkFlagDirname("dir")
	certCreate.RunE = ap.action(func(context.Context, *cobra.Command, []string) error { return tlsCertCreate(certOpts) })
	cert.AddCommand(certCreate)
	cmd.AddCommand(ca, cert)
	return cmd
}

// caOptions are the flags of tls ca create.
type caOptions struct {
	dir, name *string
	days      *int
}

// certOptions are the flags of tls cert create.
type certOptions struct {
	dir, caCert, caKey, id, ips, dns, name *string
	days                                   *int
	client                                 *bool
}

// CA file names in --dir.
const (
	caCertFile = "leasenode-ca.pem"
	caKeyFile  = "leasenode-ca-key.pem"
)

func tlsCACreate(o caOptions) error {
	dir, days, name := o.dir, o.days, o.name
	if *days < 1 {
		return usagef("--days %d: want at least 1", *days)
	}
	ca, err := transport.NewAuthority(*name, time.Now().AddDate(0, 0, *days))
	if err != nil {
		return err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*dir, caCertFile), filepath.Join(*dir, caKeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, ca.CertPEM(), 0o644); err != nil {
		return err
	}
	fmt.Printf("==> wrote %s (every node and client: --tls-ca)\n==> wrote %s (secret: keep it off the nodes)\n", certPath, keyPath)
	return nil
}

func tlsCertCreate(o certOptions) error {
	dir, caCert, caKey, days, id, ips, dns, client, name := o.dir, o.caCert, o.caKey, o.days, o.id, o.ips, o.dns, o.client, o.name
	switch {
	case *days < 1:
		return usagef("--days %d: want at least 1", *days)
	case (*id == "") == !*client:
		return usagef("give exactly one of --node ID and --client")
	case *client && (*ips != "" || *dns != ""):
		return usagef("--ip and --dns are for --node certificates")
	case *id != "" && *ips == "" && *dns == "":
		return usagef("--node needs --ip (the addresses other nodes dial it at), or --dns")
	}
	if *caCert == "" {
		*caCert = filepath.Join(*dir, caCertFile)
	}
	if *caKey == "" {
		*caKey = filepath.Join(*dir, caKeyFile)
	}
	certPEM, err := os.ReadFile(*caCert)
	if err != nil {
		return usagef("--ca: %v (make a CA with `leasenode tls ca create`)", err)
	}
	keyPEM, err := os.ReadFile(*caKey)
	if err != nil {
		return usagef("--ca-key: %v", err)
	}
	ca, err := transport.LoadAuthority(certPEM, keyPEM)
	if err != nil {
		return err
	}
	notAfter := time.Now().AddDate(0, 0, *days)
	var base, role string
	var cert, key []byte
	if *client {
		base, role = "client-"+*name, "API client (client role; refused on the node port)"
		cert, key, err = ca.IssueClient(*name, notAfter)
	} else {
		var addrs []net.IP
		for _, s := range splitList(*ips) {
			ip := net.ParseIP(s)
			if ip == nil {
				return usagef("--ip %q: not an IP address", s)
			}
			addrs = append(addrs, ip)
		}
		base, role = "node-"+*id, "node "+*id+" (node role, identity "+transport.NodeSAN(*id)+")"
		cert, key, err = ca.IssueNode(*id, addrs, splitList(*dns), notAfter)
	}
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*dir, base+".pem"), filepath.Join(*dir, base+"-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	if err := writeNew(keyPath, key, 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, cert, 0o644); err != nil {
		return err
	}
	fmt.Printf("==> wrote %s: %s\n==> wrote %s\n", certPath, role, keyPath)
	if *client {
		fmt.Printf("use: --tls-ca %s --tls-cert %s --tls-key %s\n", *caCert, certPath, keyPath)
	} else {
		fmt.Printf("use: leasenode agent --id %s --tls-ca %s --tls-cert %s --tls-key %s ...\n", *id, *caCert, certPath, keyPath)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// refuseExisting fails if any of paths exists: certificates and keys are
// never overwritten.
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s already exists; not overwriting it (move it away or use another --dir)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeNew creates path with data and mode, failing if it exists.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
