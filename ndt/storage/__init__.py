"""Storage: the metrics row schema and its Parquet writer/reader."""
