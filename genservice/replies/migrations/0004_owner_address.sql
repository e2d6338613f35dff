-- where a streaming message's owner serves its live text (host:port as gateways dial it); cleared with the lease
ALTER TABLE messages ADD COLUMN owner_addr text;
