package keygate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/atomicfile"
	"github.com/keygate/keygate/internal/problem"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "api-key",
		Usage: "generate|list|disable|enable|delete|rename|rotate|export|import [--address <admin>] [--json]",
		Short: "Manages keygate API keys through a running keygate's admin API",
		Long: `
Manages the API keys of a running keygate, through its admin API: it talks
to --address, else the admin address of --config, else localhost:2019 (as
'caddy stop' finds it). A key's secret is printed once, by generate and
rotate, and never again: only its SHA-256 is stored.

  keygate api-key generate --name NAME [--expires 2026-12-31|RFC3339]
                           [--roles a,b] [--owner X] [--rate-limit 10000/1h]
  keygate api-key list
  keygate api-key disable NAME | enable NAME | delete NAME
  keygate api-key rename OLD NEW
  keygate api-key rotate NAME
  keygate api-key export [FILE|-]    (written 0600; stdout without FILE, or -)
  keygate api-key import FILE|-     (an export, or the embedded store's keys.json)

--json prints every result as JSON. Errors go to stderr with a non-zero
exit status.
`,
		CobraFunc: apiKeyParent,
	})
}

// apiKeyParent makes cmd `keygate api-key`: its subcommands, the flags they
// share, and an error for anything else. Without one, cobra answers a
// subcommand it does not know (below the root) with the help and exit
// status 0: `keygate api-key revoke NAME && echo done` would say done, the
// key still valid.
func apiKeyParent(cmd *cobra.Command) {
	flags := cmd.PersistentFlags()
	flags.String("address", "", "Admin API address (default: from --config, else localhost:2019)")
	flags.StringP("config", "c", "", "Config file to read the admin address from")
	flags.StringP("adapter", "a", "", "Name of the config adapter to use with --config")
	flags.Bool("json", false, "Print JSON")
	cmd.Args = cobra.NoArgs // an unknown subcommand: `unknown command "revoke" for "keygate api-key"`
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return fmt.Errorf("a subcommand is required: %s", cmd.Use)
	}
	cmd.AddCommand(apiKeyCommands()...)
}

// apiKeyCommands are the subcommands of `keygate api-key`.
func apiKeyCommands() []*cobra.Command {
	return []*cobra.Command{
		apiKeyCommand("generate", "Creates a key and prints its secret once", cobra.NoArgs, func(c *cobra.Command) {
			c.Flags().String("name", "", "Unique name of the key (required)")
			c.Flags().String("expires", "", "Expiry: a date (00:00 UTC that day) or an RFC 3339 time")
			c.Flags().String("roles", "", "Comma-separated roles")
			c.Flags().String("owner", "", "Owner label passed upstream as X-Keygate-Owner")
			c.Flags().String("rate-limit", "", "The key's own limit, <requests>/<window>, e.g. 10000/1h")
		}, cmdGenerate),
		apiKeyCommand("list", "Lists keys: name, id, prefix, status, expiry, roles, last use", cobra.NoArgs, nil, cmdList),
		apiKeyCommand("disable", "Revokes a key on every gateway at once", keyNames(1), nil, cmdAction("disable")),
		apiKeyCommand("enable", "Re-enables a disabled key", keyNames(1), nil, cmdAction("enable")),
		apiKeyCommand("delete", "Deletes a key", keyNames(1), nil, cmdDelete),
		apiKeyCommand("rename", "Renames a key; names stay unique", keyNames(2), nil, cmdRename),
		apiKeyCommand("rotate", "Gives a key a new secret; the old one is rejected at once", keyNames(1), nil, cmdAction("rotate")),
		apiKeyCommand("export", "Writes every key with its hash (no secret), for import into another store, to FILE (0600) or stdout (none, or -)", cobra.MaximumNArgs(1), nil, cmdExport),
		apiKeyCommand("import", "Creates the keys of an export, or of the embedded store's keys.json, in this gateway's store (FILE, or - for stdin)", cobra.ExactArgs(1), nil, cmdImport),
	}
}

// keyNames is cobra.ExactArgs(n), refusing an empty name too: with one,
// `disable ""` would ask for /keygate/keys//disable, another request.
func keyNames(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return err
		}
		if slices.Contains(args, "") {
			return errors.New("a key name is required, not an empty one")
		}
		return nil
	}
}

// apiKeyCommand builds one subcommand; the flags they all share are
// apiKeyParent's.
func apiKeyCommand(use, short string, args cobra.PositionalArgs, flags func(*cobra.Command), run func(cli *adminClient, args []string) error) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: args, SilenceUsage: true}
	if flags != nil {
		flags(c)
	}
	c.RunE = func(c *cobra.Command, args []string) error {
		fs := caddycmd.Flags{FlagSet: c.Flags()}
		addr, err := caddycmd.DetermineAdminAPIAddress(fs.String("address"), nil, fs.String("config"), fs.String("adapter"))
		if err != nil {
			return fmt.Errorf("finding the admin address: %v", err)
		}
		return run(&adminClient{addr: addr, json: fs.Bool("json"), flags: fs, in: c.InOrStdin(), out: c.OutOrStdout(), errOut: c.ErrOrStderr()}, args)
	}
	return c
}

// adminClient calls the keygate admin API for the CLI.
type adminClient struct {
	addr   string
	json   bool
	flags  caddycmd.Flags
	in     io.Reader // import's "-"
	out    io.Writer
	errOut io.Writer
	// timeout bounds each call; 0 is adminClientTimeout
	timeout time.Duration
}

// adminClientTimeout bounds a call from the CLI: the admin API gives up
// after adminTimeout, and this leaves room for the exchange around it.
const adminClientTimeout = adminTimeout + 5*time.Second

// call sends one request and decodes a successful response into out.
func (a *adminClient) call(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	addr, err := caddy.ParseNetworkAddress(a.addr)
	if err != nil || addr.PortRangeSize() > 1 {
		return fmt.Errorf("invalid admin address %s: %v", a.addr, err)
	}
	origin := "http://" + addr.JoinHostPort(0)
	dialAddr := addr.JoinHostPort(0)
	if addr.IsUnixNetwork() {
		origin = "http://127.0.0.1"                  // any host will do over a socket
		dialAddr, _, _ = strings.Cut(addr.Host, "|") // drop socket permission bits
	}
	req, err := http.NewRequest(method, origin+path, rd)
	if err != nil {
		return err
	}
	if !addr.IsUnixNetwork() {
		req.Header.Set("Origin", origin)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	timeout := a.timeout
	if timeout == 0 {
		timeout = adminClientTimeout
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, addr.Network, dialAddr)
		}},
		// keygate's admin API never redirects; whatever does is not it, and
		// following would turn a POST into a GET of another path
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if method == http.MethodGet || errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("calling the admin API at %s (is keygate running?): %v", a.addr, err)
		}
		// sent, so perhaps made: a change is finished even if its caller
		// gives up waiting
		return fmt.Errorf("calling the admin API at %s: %v; the change may have been made all the same: "+
			"see keygate api-key list (a key made or rotated so, whose secret never came, needs another rotate)", a.addr, err)
	}
	defer resp.Body.Close()
	answer := &io.LimitedReader{R: resp.Body, N: maxAnswer}
	mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		raw, _ := io.ReadAll(io.LimitReader(answer, 64<<10))
		var p struct {
			Type  string `json:"type"`
			Error string `json:"error"`
			Key   string `json:"key"` // a rotation not confirmed: the secret in case it was made
		}
		// keygate's admin problems, or Caddy's admin API's own errors
		// (an origin refused, no keygate in the binary): not a site's
		// refusal at a wrong --address, which would read as the CLI's
		if json.Unmarshal(raw, &p) == nil && p.Error != "" &&
			(mediaType == problem.ContentType && p.Type == problem.TypeBase+"admin" || mediaType == "application/json") {
			msg := printableSnippet([]byte(p.Error), 1<<10)
			if apikey.WellFormed(p.Key) {
				return &unconfirmedKeyError{msg: msg, key: p.Key}
			}
			return errors.New(msg)
		}
		if text := printableSnippet(raw, 1<<10); text != "" {
			return fmt.Errorf("admin API answered %s (is %s keygate's admin API?): %s", resp.Status, a.addr, text)
		}
		return fmt.Errorf("admin API answered %s (is %s keygate's admin API?)", resp.Status, a.addr)
	}
	if mediaType != "application/json" || json.NewDecoder(answer).Decode(out) != nil {
		if answer.N == 0 {
			return fmt.Errorf("the admin API's answer is larger than the %d bytes the CLI reads (an export of more keys than an import takes, about 200,000)", maxAnswer)
		}
		return a.notAdminAPI(resp.Status)
	}
	if v, ok := out.(interface{ wellFormed() bool }); ok && !v.wellFormed() {
		return a.notAdminAPI(resp.Status)
	}
	return nil
}

// maxAnswer bounds what the CLI reads of an answer: an export as large as
// an import takes.
const maxAnswer = maxImportBody

// maxImportFile bounds the file import reads, before it is made compact:
// an export indented throughout (as an older CLI wrote it) of as many keys
// as an import takes.
const maxImportFile = 2 * maxImportBody

// notAdminAPI is the error of a success that is not the admin API's
// answer: a wrong --address (a site whose upstream answers JSON) must not
// read as a key disabled.
func (a *adminClient) notAdminAPI(status string) error {
	return fmt.Errorf("admin API answered %s with something else than keygate's answer (is %s keygate's admin API?)", status, a.addr)
}

// unconfirmedKeyError is a change the admin API could not confirm whose new
// secret it sent all the same: if the change was made, it is the only one
// that works.
type unconfirmedKeyError struct{ msg, key string }

func (e *unconfirmedKeyError) Error() string { return fmt.Sprintf("%s:\n\n    %s\n", e.msg, e.key) }

// The answers the CLI takes as the admin API's: one without a key's id and
// name is not (see notAdminAPI).
func (v *keyView) wellFormed() bool     { return v.ID != "" && v.Name != "" }
func (v *deletedView) wellFormed() bool { return v.Deleted != "" }

type keyViews []keyView

func (vs *keyViews) wellFormed() bool {
	for i := range *vs {
		if !(*vs)[i].wellFormed() {
			return false
		}
	}
	return *vs != nil // null is no list
}

// printableSnippet is at most limit bytes of b, trimmed, with anything but
// printable text replaced: what a server that is not keygate's admin API
// said, safe to print to a terminal.
func printableSnippet(b []byte, limit int) string {
	s := strings.ToValidUTF8(string(b[:min(len(b), limit)]), "")
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func keyPath(name string) string { return "/keygate/keys/" + url.PathEscape(name) }

func cmdGenerate(a *adminClient, _ []string) error {
	req := createRequest{
		Name:      a.flags.String("name"),
		Expires:   a.flags.String("expires"),
		Owner:     a.flags.String("owner"),
		RateLimit: a.flags.String("rate-limit"),
	}
	if req.Name == "" {
		return errors.New("--name is required")
	}
	for _, r := range strings.Split(a.flags.String("roles"), ",") {
		if r = strings.TrimSpace(r); r != "" {
			req.Roles = append(req.Roles, r)
		}
	}
	var v keyView
	if err := a.call(http.MethodPost, "/keygate/keys", req, &v); err != nil {
		return err
	}
	if v.Name != req.Name || !apikey.WellFormed(v.Key) {
		return a.notAdminAPI("a key")
	}
	return a.printKey(v, "Generated API key %q. Store it now: it will not be shown again.\n")
}

func cmdList(a *adminClient, _ []string) error {
	var views keyViews
	if err := a.call(http.MethodGet, "/keygate/keys", nil, &views); err != nil {
		return err
	}
	if a.json {
		return a.printJSON(views)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tPREFIX\tSTATUS\tEXPIRES\tROLES\tRATE LIMIT\tLAST USED")
	for _, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.ID, v.Prefix, v.Status,
			orDash(v.ExpiresAt), dashIfEmpty(strings.Join(v.Roles, ",")), dashIfEmpty(v.RateLimit), orDash(v.LastUsedAt))
	}
	return tw.Flush()
}

func cmdAction(action string) func(*adminClient, []string) error {
	return func(a *adminClient, args []string) error {
		var v keyView
		err := a.call(http.MethodPost, keyPath(args[0])+"/"+action, nil, &v)
		var unconfirmed *unconfirmedKeyError
		if errors.As(err, &unconfirmed) && a.json {
			// the secret where a script reads it, not in its log
			_ = a.printJSON(struct {
				Error string `json:"error"`
				Key   string `json:"key"`
			}{unconfirmed.msg, unconfirmed.key})
			return errors.New(unconfirmed.msg + " (the new secret is in the JSON printed)")
		}
		if err != nil {
			return err
		}
		if v.Name != args[0] || action == "rotate" && !apikey.WellFormed(v.Key) {
			return a.notAdminAPI("a key")
		}
		if action == "rotate" {
			return a.printKey(v, "Rotated API key %q; the old secret is rejected from now on. Store the new one now: it will not be shown again.\n")
		}
		return a.printKey(v, "API key %q "+action+"d.\n")
	}
}

func cmdDelete(a *adminClient, args []string) error {
	var out deletedView
	if err := a.call(http.MethodDelete, keyPath(args[0]), nil, &out); err != nil {
		return err
	}
	if out.Deleted != args[0] {
		return a.notAdminAPI("a deletion")
	}
	if a.json {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.out, "API key %q deleted.\n", args[0])
	}
	return a.printWarning(out.Warning)
}

func cmdRename(a *adminClient, args []string) error {
	var v keyView
	if err := a.call(http.MethodPost, keyPath(args[0])+"/rename", renameRequest{Name: args[1]}, &v); err != nil {
		return err
	}
	if v.Name != args[1] {
		return a.notAdminAPI("a key")
	}
	return a.printKey(v, "API key renamed to %q.\n")
}

// exportAnswer is GET /keygate/export's answer.
type exportAnswer store.Export

func (e *exportAnswer) wellFormed() bool { return e.Version == store.ExportVersion && e.Keys != nil }

// cmdExport writes the export as JSON to the file named, readable by its
// owner only (then says how many keys, as text or with --json as JSON), or
// to stdout: hashes and names, no secret, but as private as the store (a
// shell's redirection would make the file 0644 under the usual umask).
// The file is laid out as keys.json, a key a line, so that an export
// import takes is never too large for it; it replaces a file there only
// once whole (a full disk, a file one may not change, leave the old one).
func cmdExport(a *adminClient, args []string) error {
	var e exportAnswer
	if err := a.call(http.MethodGet, "/keygate/export", nil, &e); err != nil {
		return err
	}
	if len(args) == 0 || args[0] == "-" { // "-" as import reads stdin
		return a.printJSON(e)
	}
	data, err := store.Export(e).MarshalLines()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(args[0], data); err != nil {
		return fmt.Errorf("writing %s: %v", args[0], err)
	}
	if a.json {
		return a.printJSON(struct {
			Exported int    `json:"exported"`
			File     string `json:"file"`
		}{len(e.Keys), args[0]})
	}
	fmt.Fprintf(a.out, "Exported %d keys to %s.\n", len(e.Keys), args[0])
	return nil
}

func (r *importResult) wellFormed() bool { return r.Imported != nil && r.Skipped != nil }

func cmdImport(a *adminClient, args []string) error {
	var src io.Reader = a.in
	if args[0] != "-" {
		f, err := os.Open(args[0])
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	// the limit is the compact JSON's, which is what is sent: a file
	// indented throughout may be larger
	raw, err := io.ReadAll(io.LimitReader(src, maxImportFile+1))
	var body bytes.Buffer
	switch {
	case err != nil:
		return fmt.Errorf("reading %s: %v", args[0], err)
	case len(raw) > maxImportFile:
		return fmt.Errorf("%s is larger than %d bytes", args[0], maxImportFile)
	case json.Compact(&body, raw) != nil:
		return fmt.Errorf("%s is not JSON: an export (keygate api-key export) or the embedded store's keys.json is", args[0])
	case body.Len() > maxImportBody:
		return fmt.Errorf("%s is larger than an import takes: %d bytes of compact JSON, at most %d (about 200,000 keys; import it in parts)", args[0], body.Len(), maxImportBody)
	}
	if a.timeout == 0 {
		a.timeout = importTimeout + 5*time.Second
	}
	var res importResult
	if err := a.call(http.MethodPost, "/keygate/import", json.RawMessage(body.Bytes()), &res); err != nil {
		return err
	}
	if a.json {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.out, "Imported %d keys; skipped %d.\n", len(res.Imported), len(res.Skipped))
	for _, k := range res.Skipped {
		fmt.Fprintf(a.out, "skipped %q: %s\n", k.Name, k.Reason)
	}
	return nil
}

// printKey prints a key: JSON, or a headline and, when the response holds
// one, the secret on its own line (easy to copy, easy to pipe).
func (a *adminClient) printKey(v keyView, headline string) error {
	if a.json {
		if err := a.printJSON(v); err != nil {
			return err
		}
		return a.printWarning(v.Warning)
	}
	fmt.Fprintf(a.out, headline, v.Name)
	if v.Key != "" {
		fmt.Fprintf(a.out, "\n    %s\n\n", v.Key)
	}
	fmt.Fprintf(a.out, "id: %s  prefix: %s  status: %s  expires: %s  roles: %s\n",
		v.ID, v.Prefix, v.Status, orDash(v.ExpiresAt), dashIfEmpty(strings.Join(v.Roles, ",")))
	return a.printWarning(v.Warning)
}

// printWarning prints the warning of a change that was made but not
// announced to gateways (store.ErrUnannounced), if any, to stderr (with
// --json too, where it is in the JSON as well): the change is made (exit
// status 0), and a script that discards the output still shows it.
func (a *adminClient) printWarning(warning string) error {
	if warning == "" {
		return nil
	}
	_, err := fmt.Fprintf(a.errOut, "Warning: %s.\n", warning)
	return err
}

func (a *adminClient) printJSON(v any) error { return writeJSON(a.out, v) }

// writeJSON writes v to w as the CLI prints JSON: indented, one document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func orDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
