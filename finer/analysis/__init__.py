"""Analysis of the networks the library trains: NTK, activation statistics, learned neurons."""
