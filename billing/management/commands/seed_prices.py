from django.core.management.base import BaseCommand

from billing.audit import Actor
from billing.price_table import model_prices_seed


class Command(BaseCommand):
    help = (
        "Add the models of the shipped price file (billing/model_prices.json) "
        "that the price table does not have yet; rows already there, edited or "
        "not, are left as they are. Migrations seed a new database already."
    )

    def handle(self, *args, **options):
        added = model_prices_seed(actor=Actor.job("seed_prices"))
        self.stdout.write(f"{added} model price(s) added from the shipped file.")
