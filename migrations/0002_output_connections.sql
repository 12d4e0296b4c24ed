-- Where a session's outputs are patched (JACK: master_out_L/R and the tracks' direct outs), so
-- the connections come back when the session reopens and when the audio server returns.
-- `port` names the output by role, independent of renames: `master_out_L`, `master_out_R`,
-- `track<N>.out_L`, `track<N>.out_R` (N the track index); `peers` is the ports it feeds,
-- joined with '+'.
CREATE TABLE output_connections (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    port       TEXT NOT NULL,
    peers      TEXT NOT NULL,
    PRIMARY KEY (session_id, port)
) STRICT, WITHOUT ROWID;
