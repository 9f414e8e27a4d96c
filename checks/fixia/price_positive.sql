-- every service has a positive price
SELECT id, professional_id, price FROM services WHERE price <= 0
