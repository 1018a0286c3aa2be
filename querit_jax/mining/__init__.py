"""Label-free adaptation data: first-stage retrieval, query generation, filters, teacher scoring."""
