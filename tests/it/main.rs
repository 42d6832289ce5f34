mod explain;
