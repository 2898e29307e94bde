from django.db import migrations


def create_default_pools(apps, schema_editor):
    """Organizations created before pools existed get their default pool too."""
    Organization = apps.get_model("accounts", "Organization")
    TokenPool = apps.get_model("tokens", "TokenPool")
    for organization in Organization.objects.all():
        TokenPool.objects.get_or_create(organization=organization, name="default")


class Migration(migrations.Migration):
    dependencies = [("tokens", "0001_initial")]

    operations = [migrations.RunPython(create_default_pools, migrations.RunPython.noop)]
