-- An example shop database for tidemark's README demo (examples/shop.db is built from this).
PRAGMA journal_mode = WAL;
PRAGMA user_version = 3;
CREATE TABLE customers (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  email TEXT NOT NULL UNIQUE,
  name TEXT,
  joined REAL,
  avatar BLOB
);
CREATE TABLE products (
  sku TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  price_cents INTEGER NOT NULL,
  weight_kg REAL,
  details TEXT
) WITHOUT ROWID;
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(id),
  placed_at TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'new'
);
CREATE TABLE order_lines (
  order_id INTEGER NOT NULL REFERENCES orders(id),
  line INTEGER NOT NULL,
  sku TEXT NOT NULL REFERENCES products(sku),
  qty INTEGER NOT NULL,
  PRIMARY KEY (order_id, line)
);
CREATE TABLE audit_log (message TEXT, at TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX orders_by_customer ON orders(customer_id, placed_at);
CREATE VIEW order_totals AS
  SELECT o.id, sum(l.qty * p.price_cents) AS total_cents
  FROM orders o JOIN order_lines l ON l.order_id = o.id JOIN products p ON p.sku = l.sku
  GROUP BY o.id;
CREATE TRIGGER orders_audit AFTER UPDATE OF status ON orders
  BEGIN INSERT INTO audit_log(message) VALUES ('order ' || NEW.id || ' is ' || NEW.status); END;

WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO customers(email, name, joined, avatar)
  SELECT 'customer' || i || '@example.com', 'Customer ' || i, 1700000000.25 + i * 86400.5,
         CASE WHEN i % 5 = 0 THEN randomblob(64) END
  FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
INSERT INTO products(sku, title, price_cents, weight_kg, details)
  SELECT printf('SKU-%04d', i), 'Product ' || i, 199 + i * 37, i * 0.125,
         json_object('color', CASE i % 3 WHEN 0 THEN 'red' WHEN 1 THEN 'green' ELSE 'blue' END,
                     'tags', json_array('tag' || (i % 7), 'tag' || (i % 11)))
  FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO orders(id, customer_id, placed_at, status)
  SELECT i, 1 + (i * 7) % 200, datetime(1700000000 + i * 3600, 'unixepoch'),
         CASE i % 4 WHEN 0 THEN 'shipped' ELSE 'new' END
  FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
INSERT INTO order_lines(order_id, line, sku, qty)
  SELECT 1 + (i - 1) / 3, 1 + (i - 1) % 3, printf('SKU-%04d', 1 + (i * 13) % 50), 1 + i % 4
  FROM n;
UPDATE orders SET status = 'paid' WHERE id % 10 = 1;
