"""Forms for the member's own pages: the profile and their gateway keys.

A key's secret only ever travels inward: its field never renders a value back, so a page
re-shown after a mistake asks for the secret again instead of echoing it.
"""

from django import forms

from accounts.models import (
    MAX_TOKENS_PER_MEMBER,
    TOKEN_DAYS_DEFAULT,
    TOKEN_DAYS_MAX,
    ApiToken,
    ProviderKey,
    User,
    validate_secret,
)
from generations import outbound, providers


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["display_name", "email"]
        labels = {"display_name": "Display name", "email": "Email (for password resets)"}


def gateway_needs_base_url(provider_id: str) -> bool:
    """A gateway without a public address (Omni Video is self-hosted) needs one on every key."""
    gateway = providers.REGISTRY.get(provider_id)
    return gateway is not None and not gateway.default_base_url


BASE_URL_HELP = (
    "Leave empty to use the gateway's public address. Omni Video has none: it runs on your own "
    "site, so enter that site's address, e.g. https://video.example.com. An address on a "
    "private network works only once an administrator allows it."
)
SECRET_HELP = (
    "Paste the key exactly as the gateway gave it. Once saved, only its last four characters "
    "are ever shown."
)


def secret_field(label: str) -> forms.CharField:
    # Not stripped: a pasted space or line break is a mistake to point out, not to hide.
    return forms.CharField(
        label=label,
        strip=False,
        validators=[validate_secret],
        help_text=SECRET_HELP,
        error_messages={"required": "Paste the API key; it cannot be empty."},
        widget=forms.PasswordInput(
            render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}
        ),
    )


def checked_base_url(url: str) -> str:
    """`url`, unless gateway calls to it would be refused for its address (RELIABILITY 27):
    a private or local network that OMNIWEB_GATEWAY_ALLOWED_HOSTS does not allow."""
    if url and (problem := outbound.gateway_address_problem(url)):
        raise forms.ValidationError(problem, code="address_refused")
    return url


class KeyDetailsForm(forms.ModelForm):
    """Label and base URL, shared by adding and editing a key."""

    class Meta:
        model = ProviderKey
        fields = ["label", "base_url"]
        labels = {"label": "Label", "base_url": "Base URL (optional)"}
        help_texts = {
            "label": "A name to tell your keys apart, e.g. “Personal” or “Client X”.",
            "base_url": BASE_URL_HELP,
        }
        error_messages = {"label": {"required": "Give the key a label."}}
        widgets = {"base_url": forms.URLInput(attrs={"placeholder": "https://"})}

    def provider_id(self) -> str:
        return self.instance.provider

    def clean_base_url(self) -> str:
        return checked_base_url(self.cleaned_data["base_url"])

    def clean(self):
        cleaned = super().clean()
        provider_id = self.provider_id()
        if (
            "base_url" in cleaned
            and not cleaned["base_url"]
            and gateway_needs_base_url(provider_id)
        ):
            name = providers.REGISTRY[provider_id].name
            self.add_error(
                "base_url",
                f"{name} has no public address: enter the address of your own {name} site, "
                "e.g. https://video.example.com.",
            )
        return cleaned


class KeyAddForm(KeyDetailsForm):
    """A new key: the gateway, the details, and the secret, which is encrypted on save."""

    provider = forms.ChoiceField(
        label="Gateway",
        choices=lambda: [("", "Choose a gateway…"), *providers.choices()],
        error_messages={
            "required": "Choose the gateway this key belongs to.",
            "invalid_choice": "Choose one of the gateways in the list.",
        },
    )
    secret = secret_field("API key")

    class Meta(KeyDetailsForm.Meta):
        fields = ["provider", "label", "secret", "base_url"]

    def provider_id(self) -> str:
        return self.cleaned_data.get("provider", "")

    def save(self, commit: bool = True) -> ProviderKey:
        key = super().save(commit=False)
        key.set_secret(self.cleaned_data["secret"])
        if commit:
            key.save()
        return key


class KeySecretForm(forms.Form):
    """A replacement secret for an existing key."""

    secret = secret_field("New API key")


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        label="Token name",
        max_length=80,
        help_text="What will use it, so you know which to revoke later.",
    )
    scope = forms.ChoiceField(
        choices=ApiToken.Scope.choices,
        initial=ApiToken.Scope.READ,
        widget=forms.RadioSelect,
        help_text="Read only can list and download; read and generate can also spend credits.",
    )
    days = forms.IntegerField(
        label="Expires after (days)",
        min_value=1,
        max_value=TOKEN_DAYS_MAX,
        initial=TOKEN_DAYS_DEFAULT,
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean(self):
        cleaned = super().clean()
        live = ApiToken.objects.filter(user=self.user).live().count()
        if live >= MAX_TOKENS_PER_MEMBER:
            raise forms.ValidationError(
                f"You have {live} active tokens, the most one member may have; revoke one first."
            )
        return cleaned
