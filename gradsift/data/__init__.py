"""Records in, examples out: file formats and parsing (records), chat rendering and labels (chat), the
answer rule (answers), the row index of a dataset (index)."""
