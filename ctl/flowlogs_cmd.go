package ctl

// Flow logs (issue [6], part 5): the FlowLog kind's row in the kind table
// (create/get/list/update/delete like every kind) and `meridianctl
// flowlogs --follow`, which streams the records a node's agent writes, from
// its local socket (like replay).

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
)

var flowLogKind = &kindInfo{
	Kind: resource.KindFlowLog, Command: "flow-log", Aliases: []string{"fl", "fls", "flowlog", "flowlogs-resource"},
	Service: "meridian.v1.FlowLogService",
	Flags: []convFlag{
		{"resource", "resource", "VPC, subnet or port whose flows to log (required, immutable)"},
		{"traffic-type", "traffic_type", "ACCEPT, REJECT or ALL (default ALL)"},
		{"file-path", "file_path", "JSON-lines file on each node (default: none, the stream only)"},
	},
	Columns: []column{{Header: "RESOURCE", Path: "resource"}, {Header: "TRAFFIC", Path: "traffic_type"},
		{Header: "SAMPLING", Path: "sampling"}, {Header: "RATE", Path: "rate_limit"}, {Header: "FILE", Path: "file_path"}},
}

// newFlowLogsCmd is `meridianctl flowlogs`: follow a node's flow-log
// records as JSON lines on stdout.
func newFlowLogsCmd() *cobra.Command {
	var socket, flowLog, port string
	var follow bool
	cmd := &cobra.Command{
		Use:   "flowlogs --follow [--flow-log NAME] [--port NAME]",
		Short: "Stream a node's flow-log records (JSON lines) from its agent",
		Long: `Streams the flow-log records the node's agent writes, as JSON lines (one record per flow
and aggregation interval; fields as in AWS VPC flow logs plus vpc/subnet, flow-direction, the
deciding rule and the drop reason: see docs/operations.md "Flow logs"). Talks to the agent's local
socket, so run it on the node. The flow logs themselves are resources: meridianctl flow-log create.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !follow {
				return errors.New("flowlogs streams records: pass --follow (the files are on each node, at the flow log's file_path)")
			}
			return followFlowLogs(cmd.Context(), socket, flowLog, port, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&socket, "agent-socket", DefaultAgentSocket, "unix socket of the node agent's local API")
	cmd.Flags().StringVar(&flowLog, "flow-log", "", "only this flow log (projects/{p}/flowLogs/{f})")
	cmd.Flags().StringVar(&port, "port", "", "only records of this port (projects/{p}/ports/{port})")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream records as they are written, until interrupted")
	return cmd
}

func followFlowLogs(ctx context.Context, socket, flowLog, port string, out, errw io.Writer) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("agent socket %s: %w", socket, err)
	}
	defer conn.Close()
	st, err := agentv1.NewFlowLogLocalServiceClient(conn).FollowFlowLogs(ctx, &agentv1.FollowFlowLogsRequest{FlowLog: flowLog, Port: port})
	if err != nil {
		return fmt.Errorf("follow flow logs: %w", err)
	}
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("follow flow logs on %s: %w", socket, err)
		}
		for _, r := range resp.Records {
			if _, err := fmt.Fprintln(out, r.Json); err != nil {
				return err
			}
		}
		if resp.Dropped > 0 {
			fmt.Fprintf(errw, "meridianctl: %d records missed (reading too slowly)\n", resp.Dropped)
		}
	}
}
