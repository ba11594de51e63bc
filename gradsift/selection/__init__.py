"""Selection: the scoring math (scoring), the methods (one file each, one registry) and the select stage."""
