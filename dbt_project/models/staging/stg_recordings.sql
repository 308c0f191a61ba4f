select
    session_id,
    agent_id,
    status as download_status,
    path as recording_path,
    bytes as recording_bytes,
    sha256 as recording_sha256,
    sample_rate,
    channels,
    encoding,
    duration_s as recording_duration_s,
    error as recording_error,
    silence_share,
    longest_silence_s,
    clipped_share,
    loudness_dbfs,
    peak_dbfs,
    fetched_at
from {{ source('raw', 'layercode_recordings') }}
