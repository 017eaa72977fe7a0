"""The paper's analyses beyond its accuracy tables (issue 15)."""
