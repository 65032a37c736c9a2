package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// Streams are where a command reads and writes; tests pass buffers.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// app is the state of one invocation: flags, the resolved configuration
// and the lazily opened connection. Every root command has its own.
type app struct {
	Streams
	kinds  kinds
	getenv func(string) string

	endpoint, token, configPath, output string
	tls                                 TLSConfig
	timeout                             time.Duration

	cfg  Config
	conn *grpc.ClientConn
}

// Run executes meridianctl with args and returns its error, already
// explained for a person. getenv is os.Getenv outside tests.
func Run(ctx context.Context, args []string, s Streams, getenv func(string) string) error {
	a := newApp(s, getenv)
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	err := root.ExecuteContext(ctx)
	if a.conn != nil {
		_ = a.conn.Close() // nothing useful to do about a failed close
	}
	return err
}

// NewRootCommand builds the command tree on the process's streams and
// environment, for documentation and completion generators.
func NewRootCommand() *cobra.Command {
	return newApp(Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, os.Getenv).rootCommand()
}

func newApp(s Streams, getenv func(string) string) *app {
	if getenv == nil {
		getenv = os.Getenv
	}
	return &app{Streams: s, kinds: kindTable(), getenv: getenv}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "meridianctl",
		Short: "Command-line client of the Meridian SDN controller",
		Long: `meridianctl manages Meridian resources: projects, nodes, VPCs, subnets,
network ACLs, route tables, security groups and ports.

Connection settings come from --config (default ~/.config/meridian/config.yaml:
endpoint, token, tls.ca/cert/key), overridden by MERIDIAN_ENDPOINT and
MERIDIAN_TOKEN, overridden by --endpoint and --token.`,
		SilenceUsage:  true, // a failed RPC is not a usage mistake
		SilenceErrors: true, // main prints the error once
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.setup(cmd)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.endpoint, "endpoint", "", "controller gRPC address (default "+DefaultEndpoint+")")
	pf.StringVar(&a.token, "token", "", "bearer token")
	pf.StringVar(&a.configPath, "config", defaultConfigPath(), "client configuration file")
	pf.StringVarP(&a.output, "output", "o", formatTable, "output format: table, json or yaml")
	pf.StringVar(&a.tls.CA, "tls-ca", "", "CA certificate (PEM) to verify the controller; turns on TLS")
	pf.StringVar(&a.tls.Cert, "tls-cert", "", "client certificate (PEM) for mTLS")
	pf.StringVar(&a.tls.Key, "tls-key", "", "client private key (PEM) for mTLS")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "deadline of each call (not of watch)")

	for _, k := range a.kinds {
		root.AddCommand(a.kindCommand(k))
	}
	root.AddCommand(a.applyCommand(), a.deleteFileCommand(), a.whoamiCommand(), a.auditCommand(), a.watchCommand(), a.traceCommand())
	root.AddCommand(a.replayCommand())
	root.AddCommand(newFlowLogsCmd()) // flowlogs_cmd.go
	root.AddCommand(a.captureCommand())
	root.AddCommand(a.liveTraceCommand())
	return root
}

// setup validates the global flags and resolves the configuration.
func (a *app) setup(cmd *cobra.Command) error {
	if err := checkFormat(a.output); err != nil {
		return err
	}
	file, err := loadConfig(a.configPath, cmd.Flags().Changed("config"))
	if err != nil {
		return err
	}
	a.cfg = resolve(file, a.getenv, a.endpoint, a.token)
	// TLS flags override the file's field by field.
	for _, f := range []struct {
		flag string
		dst  *string
		val  string
	}{{"tls-ca", &a.cfg.TLS.CA, a.tls.CA}, {"tls-cert", &a.cfg.TLS.Cert, a.tls.Cert}, {"tls-key", &a.cfg.TLS.Key, a.tls.Key}} {
		if cmd.Flags().Changed(f.flag) {
			*f.dst = f.val
		}
	}
	return nil
}

// client opens the connection on first use.
func (a *app) client() (*grpc.ClientConn, error) {
	if a.conn == nil {
		conn, err := dial(a.cfg)
		if err != nil {
			return nil, err
		}
		a.conn = conn
	}
	return a.conn, nil
}

func (a *app) resources() (*resourceClient, error) {
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	return &resourceClient{conn: conn}, nil
}

// call runs one unary RPC under --timeout.
func (a *app) call(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return f(ctx)
}

// explain explains an RPC error of operation op (see explain).
func (a *app) explain(op string, err error) error {
	return explain(err, op, a.cfg.Endpoint, a.configPath, a.whoAmI)
}

// whoAmI describes the caller for PermissionDenied messages, or "".
func (a *app) whoAmI() string {
	if a.conn == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := v1.NewIdentityServiceClient(a.conn).WhoAmI(ctx, &v1.WhoAmIRequest{})
	if err != nil {
		return ""
	}
	s := "subject " + r.GetSubject() + ", role " + r.GetRole()
	if r.GetOrganization() != "" {
		s += ", organization " + r.GetOrganization()
	}
	return s
}

// isCode reports whether err carries gRPC code c.
func isCode(err error, c codes.Code) bool {
	var se interface{ GRPCStatus() *status.Status }
	return errors.As(err, &se) && se.GRPCStatus().Code() == c
}

func (a *app) printf(format string, args ...any) {
	fmt.Fprintf(a.Out, format, args...)
}
