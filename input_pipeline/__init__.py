"""Host-side input: data sources (sources.py), grain pipelines (pipeline.py), host decoding of
encoded images (decode.py, encoded.py), the prepared-data format (records.py), tokenizers.

Nothing is imported here, so tools that need one light module (tools/prepare_data.py needs
decode and records) do not load grain, jax or tensorflow-datasets.
"""
