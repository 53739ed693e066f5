"""Data room: raw logs -> canonical parquet + manifest -> jagged user sequences -> splits."""
