// Written for the aikernel vault stand-in (not Vault code). Vault 1.21.4 is built against the
// released github.com/hashicorp/vault/sdk v0.21.0, whose LockManager.RestorePolicy returns only an
// error, while Vault 1.21.4's transit backend (built in its repository against the repository's
// own sdk folder) expects (restored key name, error). `fetch` renames v0.21.0's method to
// restorePolicyV0210 in a temporary copy of the sdk and adds this file next to it.

package keysutil

import (
	"context"
	"encoding/base64"

	"github.com/hashicorp/vault/sdk/helper/jsonutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// RestorePolicy restores the backup like sdk v0.21.0 and also returns the name the key was
// restored under: name if given, else the name stored in the backup.
func (lm *LockManager) RestorePolicy(ctx context.Context, storage logical.Storage, name, backup string, force bool) (string, error) {
	if err := lm.restorePolicyV0210(ctx, storage, name, backup, force); err != nil {
		return "", err
	}
	if name != "" {
		return name, nil
	}
	// the backup decoded fine above
	raw, _ := base64.StdEncoding.DecodeString(backup)
	var keyData KeyData
	if err := jsonutil.DecodeJSON(raw, &keyData); err != nil || keyData.Policy == nil {
		return "", nil
	}
	return keyData.Policy.Name, nil
}
