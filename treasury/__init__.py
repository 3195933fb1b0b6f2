"""The signer's logic (signsrv): nonce lanes, signing once, broadcasting to every node, replacing what is stuck,
the funds check, the pause switch. The Signer actor (actors/signer.py) is a thin shell over it. The only
package that decrypts private keys."""
